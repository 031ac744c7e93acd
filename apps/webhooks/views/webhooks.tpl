% rebase('layout')
<h1>Webhooks</h1>
% if not webhooks:
<p class="empty">No webhooks yet. Subscribe one with <code>POST /api/v1/webhooks</code>.</p>
% end
% for webhook, deliveries, more in webhooks:
<section class="card" id="webhook-{{webhook.id}}">
  <h2 class="mono">{{webhook.url}}</h2>
  <dl class="facts">
    <dt>id</dt><dd class="mono">{{webhook.id}}</dd>
    <dt>events</dt><dd>{{", ".join(webhook.event_names) or "—"}}</dd>
    <dt>created</dt><dd>{{stamp(webhook.created_at)}} <span class="muted">{{ago(webhook.created_at)}}</span></dd>
    <dt>active</dt><dd>{{"yes" if webhook.active else "no"}}</dd>
  </dl>
  % if not deliveries:
  <p class="empty">No deliveries yet.</p>
  % else:
  <h3>Recent deliveries</h3>
  <table class="jobs">
    <thead><tr><th>event</th><th>status</th><th class="r">response</th><th class="r">attempts</th><th class="r">duration</th><th>created</th><th>error</th></tr></thead>
    <tbody>
    % for delivery in deliveries:
      <tr>
        <td>{{delivery.event}}</td>
        <td><span class="status status-{{delivery.status}}">{{delivery.status}}</span></td>
        <td class="r">{{delivery.response_code if delivery.response_code is not None else "—"}}</td>
        <td class="r">{{delivery.attempts}}</td>
        <td class="r">{{"%.0f ms" % delivery.duration_ms if delivery.duration_ms is not None else ""}}</td>
        <td class="nowrap" title="{{stamp(delivery.created_at)}}">{{ago(delivery.created_at)}}</td>
        <td class="muted">{{delivery.last_error or ""}}</td>
      </tr>
    % end
    </tbody>
  </table>
  % if more:
  <p class="hint">Older deliveries: <code>GET /api/v1/webhooks/{{webhook.id}}/deliveries</code></p>
  % end
  % end
</section>
% end
