% rebase('layout')
<section class="login card">
  <h1>Log in</h1>
  % if error:
  <p class="error" role="alert">{{error}}</p>
  % end
  <form method="post" action="/login">
    <input type="hidden" name="csrf_token" value="{{csrf_token}}">
    <input type="hidden" name="next" value="{{next}}">
    <label>Email <input type="email" name="email" value="{{email}}" autocomplete="username" required autofocus></label>
    <label>Password <input type="password" name="password" autocomplete="current-password" required></label>
    <button type="submit">Log in</button>
  </form>
  <p class="hint">No account yet? On the server: <code>python web.py create-user you@example.com --admin</code></p>
</section>
