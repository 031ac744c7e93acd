% rebase('layout')
<h1>Schedules</h1>
<p class="muted">Periodic tasks. Times are UTC; each crontab is read in its schedule's time zone. A paused schedule stays paused for every consumer and across restarts. <a href="/schedules/new">Add a schedule</a></p>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
<div id="schedules" data-refresh="10">
<table class="schedules">
  <thead><tr><th>schedule</th><th>when</th><th>state</th><th>next run</th><th>last run</th><th>last status</th><th></th></tr></thead>
  <tbody>
  % for s in schedules:
    <tr id="schedule-{{s['name']}}"{{!' class="quiet"' if s["paused"] else ''}}>
      <td><a href="/schedules/{{s['name']}}">{{s["name"]}}</a><br><span class="muted">{{s["function"] + " · " if s["function"] != s["name"] else ""}}queue {{s["queue"]}} · {{"added" if s["source"] == "api" else ("edited" if s["overridden"] else "code")}}</span></td>
      <td>{{s["words"] or s["cron"]}}<br><code>{{s["cron"]}}</code> <span class="muted">{{s["timezone"]}}</span></td>
      <td><span class="status {{'status-paused' if s['paused'] else 'status-succeeded'}}">{{"paused" if s["paused"] else "active"}}</span></td>
      <td class="nowrap" title="{{stamp(s['next_run'])}}">{{ago(s["next_run"]) if s["next_run"] else "—"}}</td>
      <td class="nowrap" title="{{stamp(s['last_run'])}}">{{ago(s["last_run"]) if s["last_run"] else "never"}}</td>
      <td>
      % if s["last_job_id"]:
        <a href="/jobs/{{s['last_job_id']}}"><span class="status status-{{s['last_status'] or 'expired'}}">{{s["last_status"] or "gone"}}</span></a>
      % else:
        <span class="muted">—</span>
      % end
      </td>
      <td class="nowrap">
      % if user.is_admin:
        <form method="post" action="/schedules/{{s['name']}}/{{'resume' if s['paused'] else 'pause'}}">
          <input type="hidden" name="csrf_token" value="{{csrf_token}}">
          <button type="submit" class="secondary">{{"Resume" if s["paused"] else "Pause"}}</button>
        </form>
        <form method="post" action="/schedules/{{s['name']}}/run">
          <input type="hidden" name="csrf_token" value="{{csrf_token}}">
          <button type="submit">Run now</button>
        </form>
      % end
      </td>
    </tr>
  % end
  </tbody>
</table>
</div>
