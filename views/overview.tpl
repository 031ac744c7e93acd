% rebase('layout')
<div id="overview" data-refresh="10">
<h1>Overview</h1>
<section class="tiles">
  <a class="tile" href="/jobs?status=queued"><span class="num">{{depth}}</span> waiting in queues</a>
  <a class="tile" href="/jobs?status=running"><span class="num">{{running}}</span> running</a>
  <a class="tile" href="/jobs?status=scheduled"><span class="num">{{scheduled}}</span> scheduled</a>
  <a class="tile{{' bad' if not workers_alive else ''}}" href="/workers"><span class="num">{{workers_alive}}</span> worker{{'' if workers_alive == 1 else 's'}} alive</a>
</section>

<section class="card">
  <h2>Jobs by status <span class="legend">finished ones: last 24 hours</span></h2>
  <ul class="counts">
    % for status in statuses:
    <li><a href="/jobs?status={{status}}"><span class="status status-{{status}}">{{status}}</span> <span class="num">{{counts.get(status, 0)}}</span></a></li>
    % end
  </ul>
</section>

<section class="card">
  <h2>Jobs per minute, last 24 hours <span class="legend"><i class="key ok"></i>finished <i class="key fail"></i>failed</span></h2>
  {{!chart}}
</section>

<div class="columns">
<section class="card">
  <h2>Queues</h2>
  <table>
    <thead><tr><th>queue</th><th class="r">priority</th><th class="r">waiting</th><th class="r">running</th><th class="r">oldest wait</th><th class="r">limit</th></tr></thead>
    <tbody>
    % for q in queues:
      <tr{{!' class="quiet"' if not (q["depth"] or q["running"]) else ''}}><td>{{q["name"]}}{{!' <span class="req">no consumer serves it</span>' if not q["served"] else ''}}</td><td class="r">{{q["priority"]}}</td><td class="r">{{q["depth"]}}</td><td class="r">{{q["running"]}}</td>
        <td class="r">{{"%.1f s" % q["oldest_wait_s"] if q["oldest_wait_s"] is not None else "—"}}</td><td class="r">{{q["concurrency_limit"] or "—"}}</td></tr>
    % end
    </tbody>
  </table>
</section>

<section class="card">
  <h2>Recent failures</h2>
  % if not failures:
  <p class="empty">No failed jobs. </p>
  % else:
  <table>
    <thead><tr><th>function</th><th>error</th><th>when</th></tr></thead>
    <tbody>
    % for job in failures:
      <tr><td><a href="/jobs/{{job.id}}">{{job.name}}</a></td><td class="clip" title="{{job.error or ''}}">{{(job.error or "")[:90]}}</td><td class="nowrap">{{ago(job.finished_at)}}</td></tr>
    % end
    </tbody>
  </table>
  <p><a href="/jobs?status=failed">All failed jobs →</a></p>
  % end
</section>
</div>
</div>
