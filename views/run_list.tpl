% rebase('layout')
<h1>Run a job function</h1>
<p class="muted">Every public job function. Pick one to fill in its arguments.</p>
<ul class="functions">
% for f in functions:
  <li class="card">
    <h2><a href="/run/{{f.name}}">{{f.name}}</a><span class="sig">({{", ".join(p.name + ": " + p.type for p in f.params)}})</span></h2>
    <p>{{f.doc.splitlines()[0] if f.doc else ""}}</p>
    <p class="muted">queue {{f.queue}} · {{f.retries}} retr{{"y" if f.retries == 1 else "ies"}}</p>
  </li>
% end
</ul>
