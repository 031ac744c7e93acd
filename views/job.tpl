% rebase('layout')
% live = job.status not in terminal
<div id="job" {{!'data-refresh="1"' if live else ''}}>
<div class="head">
  <h1>{{job.name}} <span class="status status-{{job.status}}">{{job.status}}</span></h1>
  <div class="actions">
    % if not user.is_admin:
    <span class="muted">viewer: read only</span>
    % elif job.status in terminal:
    <form method="post" action="/jobs/{{job.id}}/retry">
      <input type="hidden" name="csrf_token" value="{{csrf_token}}">
      <button type="submit">Retry</button>
    </form>
    % else:
    <form method="post" action="/jobs/{{job.id}}/cancel">
      <input type="hidden" name="csrf_token" value="{{csrf_token}}">
      <button type="submit" class="danger"{{!' disabled' if job.cancel_requested else ''}}>{{'Cancel requested' if job.cancel_requested else 'Cancel'}}</button>
    </form>
    % if job.status == "running" and not job.terminate_requested:
    <form method="post" action="/jobs/{{job.id}}/terminate">
      <input type="hidden" name="csrf_token" value="{{csrf_token}}">
      <button type="submit" class="danger" title="for a job that does not stop at Cancel: raises an exception in its worker, or ends its worker process">Stop now</button>
    </form>
    % end
    % end
  </div>
</div>
<p class="mono muted">{{job.id}}</p>
% if action_error:
<p class="error" role="alert">{{action_error}}</p>
% end

% if job.status == "running" or data["progress"]:
%   p = data["progress"] or {}
<section class="card">
  <h2>Progress</h2>
  % if p.get("total"):
  <progress max="{{p['total']}}" value="{{p.get('done') or 0}}"></progress>
  <p>{{p.get("done") or 0}} of {{p["total"]}}{{(" · " + p["message"]) if p.get("message") else ""}}</p>
  % elif job.status == "running":
  <progress></progress>
  <p>{{p.get("message") or "running…"}}</p>
  % else:
  <p>{{p.get("message") or ""}}</p>
  % end
</section>
% end

% if job.status == "succeeded":
<section class="card ok">
  <h2>Result</h2>
  <pre id="result">{{show_json(data["result"])}}</pre>
</section>
% end
% if job.error:
<section class="card bad">
  <h2>Error</h2>
  <p id="error">{{job.error}}</p>
  % if job.traceback:
  <details><summary>Traceback</summary><pre>{{job.traceback}}</pre></details>
  % end
</section>
% end

% if log["lines"]:
<section class="card">
  <h2>Log</h2>
  % if log["truncated"]:
  <p class="muted">Older lines were cut: the last 64 KiB are kept.</p>
  % end
  <pre id="log">{{"\n".join(log["lines"])}}</pre>
</section>
% end

<div class="columns">
<section class="card">
  <h2>Arguments</h2>
  <pre>{{show_json(data["args"])}}</pre>
</section>
<section class="card">
  <h2>Timeline</h2>
  <ol class="timeline">
    % for when, event in steps:
    <li><span class="when" title="{{stamp(when) if when else ''}}">{{stamp(when) if when else ""}}</span> {{event}}</li>
    % end
  </ol>
</section>
</div>

<section class="card">
  <h2>Details</h2>
  <dl class="facts">
    <dt>queue</dt><dd>{{job.queue}} (priority {{job.priority}})</dd>
    <dt>attempts</dt><dd>{{job.attempts}}</dd>
    <dt>worker</dt><dd>{{job.worker or "—"}}</dd>
    <dt>enqueued</dt><dd>{{stamp(job.enqueued_at)}} <span class="muted">{{ago(job.enqueued_at)}}</span></dd>
    % if job.scheduled_for:
    <dt>scheduled for</dt><dd>{{stamp(job.scheduled_for)}} <span class="muted">{{ago(job.scheduled_for)}}</span></dd>
    % end
    <dt>started</dt><dd>{{stamp(job.started_at)}}</dd>
    <dt>finished</dt><dd>{{stamp(job.finished_at)}}</dd>
    <dt>duration</dt><dd>{{took(job.duration_ms)}}</dd>
    % if job.waiting_for:
    <dt>waiting for</dt><dd>{{job.waiting_for}}</dd>
    % end
    % if job.parent_id:
    <dt>retry of</dt><dd><a class="mono" href="/jobs/{{job.parent_id}}">{{job.parent_id}}</a></dd>
    % end
    % for child in children:
    <dt>retried as</dt><dd><a class="mono" href="/jobs/{{child.id}}">{{child.id}}</a> <span class="status status-{{child.status}}">{{child.status}}</span></dd>
    % end
    <dt>API</dt><dd><a class="mono" href="{{data['url']}}">{{data["url"]}}</a></dd>
  </dl>
</section>
</div>
