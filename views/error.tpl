<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{status}} · litejobs</title>
<link rel="stylesheet" href="/static/style.css">
</head>
<body>
<main class="narrow">
<h1>{{status}}</h1>
<p>{{message}}</p>
<p><a href="/">Back to the overview</a> · <a href="/login">Log in</a></p>
</main>
</body>
</html>
