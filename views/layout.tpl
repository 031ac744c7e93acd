<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}} · litejobs</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/">litejobs</a>
  % if user:
  <nav>
    % for href, label in (("/", "Overview"), ("/jobs", "Jobs"), ("/run", "Run"), ("/schedules", "Schedules"), ("/workers", "Workers"), ("/orders", "Orders"), ("/webhooks", "Webhooks"), ("/courses", "Courses"), ("/analytics", "Analytics"), ("/knowledge", "Knowledge")):
    % active = path == href or (href != "/" and path.startswith(href + "/")) or (href != "/" and path == href)
    <a href="{{href}}"{{!' class="active" aria-current="page"' if active else ''}}>{{label}}</a>
    % end
  </nav>
  <form class="logout" method="post" action="/logout">
    <input type="hidden" name="csrf_token" value="{{csrf_token}}">
    <span class="who">{{user.email}}</span>
    <button type="submit" class="link">Log out</button>
  </form>
  % end
</header>
<main>
{{!base}}
</main>
</body>
</html>
