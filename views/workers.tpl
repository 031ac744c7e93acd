% rebase('layout')
<h1>Workers</h1>
<div id="workers" data-refresh="5">
% if not workers:
<p class="empty">No consumer has started yet. <code>python web.py run</code> starts one inside the web process; <code>huey_consumer jobs.huey -w 4</code> runs one apart.</p>
% else:
<table>
  <thead><tr><th>state</th><th>host</th><th class="r">pid</th><th>kind</th><th class="r">concurrency</th><th>started</th><th>last heartbeat</th><th>apps</th><th>queues</th><th>running jobs</th></tr></thead>
  <tbody>
  % for w in workers:
  %   alive = w.is_alive()
    <tr{{!'' if alive else ' class="quiet"'}}>
      <td><span class="status {{'status-succeeded' if alive else ('status-canceled' if w.stopped_at else 'status-failed')}}">{{'alive' if alive else ('stopped' if w.stopped_at else 'silent')}}</span></td>
      <td>{{w.host}}</td><td class="r">{{w.pid}}</td><td>{{w.kind}}</td><td class="r">{{w.concurrency}}</td>
      <td class="nowrap" title="{{stamp(w.started_at)}}">{{ago(w.started_at)}}</td>
      <td class="nowrap" title="{{stamp(w.last_heartbeat)}}">{{ago(w.last_heartbeat)}}</td>
      <td>{{", ".join(w.app_names) or "none"}}</td>
      <td>{{", ".join(w.queue_names) or "all"}}</td>
      <td>
      % for job in running.get(w.id, []):
        <a href="/jobs/{{job.id}}">{{job.name}}</a>
      % end
      % if not running.get(w.id):
        <span class="muted">idle</span>
      % end
      </td>
    </tr>
  % end
  </tbody>
</table>
<p class="muted">A worker silent for {{"%g" % timeout}} s is taken for dead and its running jobs run again.</p>
% end
</div>
