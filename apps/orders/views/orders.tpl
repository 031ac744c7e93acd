% rebase('layout')
<h1>Orders</h1>
% if user.is_admin:
<form class="card run" method="post" action="/orders">
  <h2>New order</h2>
  <input type="hidden" name="csrf_token" value="{{csrf_token}}">
  % if error:
  <p class="error" role="alert">{{error}}</p>
  % end
  <div class="form-grid">
  % for name, label, required in fields:
  %   bad = error is not None and getattr(error, "field", None) == name
    <div class="field{{' invalid' if bad else ''}}">
      <label for="order-{{name}}">{{label}}{{!' <span class="req">required</span>' if required else ''}}</label>
      <input id="order-{{name}}" name="{{name}}" type="text" value="{{values.get(name, '')}}"{{!' required' if required else ''}}>
    </div>
  % end
  </div>
  <button type="submit">Place order</button>
  <p class="hint">The order goes to the provider at once; its page shows the PIN when the provider has it.</p>
</form>
% end

<div id="order-list"{{!' data-refresh="2"' if live else ''}}>
<p class="filters-inline">
  <a href="/orders"{{!' class="active"' if not status else ''}}>all</a>
  % for s in statuses:
  · <a href="/orders?status={{s}}"{{!' class="active"' if s == status else ''}}>{{s}} <span class="muted">{{counts.get(s, 0)}}</span></a>
  % end
</p>
% if not orders:
<p class="empty">No orders{{' with this status' if status else ' yet'}}.</p>
% else:
<table>
  <thead><tr><th>order</th><th>status</th><th>product</th><th>package</th><th>account</th><th>PIN</th><th class="r">checks</th><th>placed</th></tr></thead>
  <tbody>
  % for o in orders:
    <tr>
      <td><a class="mono" href="/orders/{{o.id}}">{{o.id[:8]}}</a></td>
      <td><span class="status status-{{o.status}}">{{o.status}}</span></td>
      <td>{{o.product_id}}</td><td>{{o.package_id}}</td><td>{{o.user_identifier}}</td>
      <td class="mono">{{(o.pin_code if user.is_admin else "••••") if o.pin_code else ""}}</td>
      <td class="r">{{o.checks}}</td>
      <td class="nowrap" title="{{stamp(o.created_at)}}">{{ago(o.created_at)}}</td>
    </tr>
  % end
  </tbody>
</table>
% end
</div>
<p class="pager">
  % if not first_page:
  <a href="{{first_url}}">← Newest</a>
  % end
  % if next_url:
  <a href="{{next_url}}">Older →</a>
  % end
</p>
