% rebase('layout')
<p><a href="/orders">← All orders</a></p>
<div id="order" {{!'data-refresh="1"' if order.is_pending else ''}}>
<h1>Order <span class="mono">{{order.id[:8]}}</span> <span class="status status-{{order.status}}">{{order.status}}</span></h1>
<p class="mono muted">{{order.id}}</p>

% if order.status == "completed":
<section class="card ok">
  <h2>PIN</h2>
  <p class="pin" id="pin">{{order.pin_code if user.is_admin else "•••• (shown to admins only)"}}</p>
  <p class="muted">completed {{stamp(order.completed_at)}} after {{order.checks}} check{{'' if order.checks == 1 else 's'}}</p>
</section>
% elif order.status == "failed":
<section class="card bad">
  <h2>Failed</h2>
  <p id="error">{{order.error}}</p>
</section>
% else:
<section class="card">
  <h2>Waiting for the provider</h2>
  <progress></progress>
  <p>
  % if order.status == "new":
    Sending to the provider{{" (attempt %d)" % (order.dispatch_attempts + 1) if order.dispatch_attempts else ""}}…
  % else:
    Sent; {{order.checks}} status check{{'' if order.checks == 1 else 's'}} so far{{", next " + ago(order.next_check_at) if order.next_check_at else ""}}.
  % end
  </p>
  % if order.last_error:
  <p class="hint">last error: {{order.last_error}}</p>
  % end
</section>
% end

<div class="columns">
<section class="card">
  <h2>Order</h2>
  <dl class="facts">
    <dt>product</dt><dd>{{order.product_id}}</dd>
    <dt>package</dt><dd>{{order.package_id}}</dd>
    <dt>account</dt><dd>{{order.user_identifier}}</dd>
    % if order.extra_field:
    <dt>extra field</dt><dd>{{order.extra_field}}</dd>
    % end
    <dt>provider ref</dt><dd class="mono">{{order.provider_ref or "—"}}</dd>
    <dt>placed</dt><dd>{{stamp(order.created_at)}} <span class="muted">{{ago(order.created_at)}}</span></dd>
    <dt>sent</dt><dd>{{stamp(order.sent_at)}}</dd>
    <dt>last check</dt><dd>{{stamp(order.last_sync_at)}}</dd>
    <dt>completed</dt><dd>{{stamp(order.completed_at)}}</dd>
    <dt>deadline</dt><dd>{{stamp(order.deadline)}}</dd>
    <dt>API</dt><dd><a class="mono" href="/api/v1/orders/{{order.id}}">/api/v1/orders/{{order.id}}</a></dd>
  </dl>
</section>
<section class="card">
  <h2>Dispatch and checks</h2>
  % if not steps:
  <p class="empty">No job yet.</p>
  % else:
  <ol class="timeline">
    % for job in steps:
    <li><span class="when">{{stamp(job.finished_at or job.started_at or job.scheduled_for or job.enqueued_at)}}</span>
      <a href="/jobs/{{job.id}}">{{"dispatch" if job.name == "dispatch_order" else "status check"}}</a>
      <span class="status status-{{job.status}}">{{job.status}}</span>
      % result = job.to_dict()["result"]
      % if isinstance(result, dict) and (result.get("provider_status") or result.get("status") or result.get("skipped")):
      <span class="muted">{{result.get("provider_status") or result.get("status") or "skipped"}}</span>
      % end
    </li>
    % end
  </ol>
  % end
</section>
</div>
</div>
