% rebase('layout')
% store, source, running, full = status["store"], status["ingest"], status["sync"], status["last_full_sync"]
<div id="knowledge" data-refresh="5">
<h1>Knowledge</h1>
<section class="tiles">
  <span class="tile"><span class="num">{{store["chunks"]}}</span> chunks in the store ({{store["kind"]}})</span>
  <span class="tile{{' bad' if source["error"] else ''}}"><span class="num">{{source["chunks"] if source["chunks"] is not None else "?"}}</span> chunks in the ingest</span>
  <span class="tile"><span class="num">{{store["documents"]}}</span> documents in the store{{!' of %s' % source["documents"] if source["documents"] is not None else ''}}</span>
  <span class="tile{{' bad' if status["behind"] else ''}}"><span class="num">{{"in sync" if status["in_sync"] else "behind" if status["behind"] else "differs" if status["in_sync"] is False else "?"}}</span> cursor {{status["cursor"]}}</span>
</section>

<section class="card">
  <div class="head">
    <h2>Sync <span class="legend">last write {{status["last_sync_at"] or "never"}}</span></h2>
    <form method="post" action="/knowledge/sync">
      <input type="hidden" name="csrf_token" value="{{csrf_token}}">
      <button type="submit" class="secondary">Full sync now</button>
    </form>
  </div>
  % if source["error"]:
  <p class="error" role="alert">The ingest service does not answer: {{source["error"]}}</p>
  % end
  % if running:
  <p><span class="status status-running">{{running["kind"]}} sync</span>
    % if running.get("function"):
    <a class="mono" href="/jobs/{{running['job_id']}}">{{running["job_id"][:8]}}</a> {{running.get("message") or ""}}
    % end
  </p>
  % if running.get("total"):
  <progress max="{{running['total']}}" value="{{running.get('done') or 0}}"></progress>
  % else:
  <progress></progress>
  % end
  % else:
  <p class="empty">No sync running. The sync queue is handed to a sync every 5 minutes (<code>process_sync_queue</code>).</p>
  % end
  <p>Sync queue: <strong>{{status["queue"]["waiting"]}}</strong> document{{'' if status["queue"]["waiting"] == 1 else 's'}} waiting.
  Last full sync:
  % if full["finished_at"]:
  finished {{full["finished_at"]}} ({{full["chunks"]}} chunks, {{full["removed"]}} stale removed).
  % elif full["started_at"]:
  started {{full["started_at"]}}, not finished.
  % else:
  never.
  % end
  </p>
</section>

<section class="card">
  <h2>Queries per day <span class="legend">{{total_queries}} in the last 30 days</span></h2>
  {{!chart}}
</section>

<div class="columns">
<section class="card">
  <h2>Users near their daily limit</h2>
  % if not near_limit:
  <p class="empty">No user has used 80% of today's queries.</p>
  % else:
  <table>
    <thead><tr><th>user</th><th>tier</th><th class="r">used</th><th class="r">limit</th></tr></thead>
    <tbody>
    % for u in near_limit:
      <tr><td class="mono">{{u.id}}</td><td>{{u.tier}}</td><td class="r">{{u.used_on(now)}}</td><td class="r">{{u.daily_limit}}</td></tr>
    % end
    </tbody>
  </table>
  % end
</section>

<section class="card">
  <h2>Sent to the users' system <span class="legend">{{"sandbox receiver" if sandbox_receiver else "USERS_SYSTEM_URL"}}</span></h2>
  % if not deliveries:
  <p class="empty">Nothing sent yet: each search sends its result.</p>
  % else:
  <table>
    <thead><tr><th>event</th><th>status</th><th class="r">attempts</th><th>sent</th></tr></thead>
    <tbody>
    % for d in deliveries:
      <tr><td>{{d.event}}</td><td><span class="status status-{{d.status}}">{{d.status}}</span></td><td class="r">{{d.attempts}}</td>
        <td class="nowrap" title="{{stamp(d.last_attempt_at)}}">{{ago(d.last_attempt_at)}}</td></tr>
    % end
    </tbody>
  </table>
  % end
  % if sandbox_receiver and receipts:
  <h3>The sandbox receiver's log</h3>
  <table>
    <thead><tr><th>event</th><th>user</th><th>query or title</th><th>received</th></tr></thead>
    <tbody>
    % for r in receipts:
      <tr><td>{{r.event}}</td><td class="mono">{{r.data.get("user_id") or ""}}</td><td>{{(r.data.get("query") or r.data.get("title") or "")[:80]}}</td>
        <td class="nowrap" title="{{stamp(r.received_at)}}">{{ago(r.received_at)}}</td></tr>
    % end
    </tbody>
  </table>
  % end
</section>
</div>
</div>
