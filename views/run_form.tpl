% rebase('layout')
<p><a href="/run">← All functions</a></p>
<h1>Run <code>{{function.name}}</code></h1>
% if function.doc:
<pre class="doc">{{function.doc}}</pre>
% end
<p class="muted">queue {{function.queue}} · {{function.retries}} retr{{"y" if function.retries == 1 else "ies"}}</p>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
<form class="card run"{{!' method="post" action="/run/' + function.name + '"' if user.is_admin else ''}}>
  <input type="hidden" name="csrf_token" value="{{csrf_token}}">
  % if not function.params:
  <p class="muted">This function takes no arguments.</p>
  % end
  % for p in function.params:
  %   bad = error is not None and getattr(error, "field", None) == p.name
  %   given = values.get(p.name)
  %   shown = given if given is not None else ("" if p.required or p.default is None else (p.default if p.type == "str" else show_json(p.default)))
  <div class="field{{' invalid' if bad else ''}}">
    % if p.type == "bool":
    <label><input type="checkbox" name="{{p.name}}" value="1"{{!' checked' if (given is not None if values else p.default) else ''}}> {{p.name}}</label>
    % else:
    <label for="arg-{{p.name}}">{{p.name}} <span class="type">{{p.type}}</span>{{!' <span class="req">required</span>' if p.required else ''}}</label>
    %   if p.type in ("list", "dict", "any"):
    <textarea id="arg-{{p.name}}" name="{{p.name}}" rows="3" placeholder="{{'JSON, or plain text for a string' if p.type == 'any' else 'JSON'}}">{{shown}}</textarea>
    %   else:
    <input id="arg-{{p.name}}" name="{{p.name}}" value="{{shown}}"
      {{!'type="number" step="1"' if p.type == "int" else ('type="number" step="any"' if p.type == "float" else 'type="text"')}}
      % if p.bounds:
      {{!'min="%s"' % p.bounds[0] if p.bounds[0] is not None else ''}} {{!'max="%s"' % p.bounds[1] if p.bounds[1] is not None else ''}}
      % end
      >
    %   end
    % end
    % if not p.required:
    <span class="hint">default: {{show_json(p.default)}}</span>
    % elif p.bounds:
    <span class="hint">from {{p.bounds[0]}} to {{p.bounds[1]}}</span>
    % end
    % if p.type == "any":
    <span class="hint">JSON such as 42, [1, 2] or {"a": 1}; anything else is taken as text</span>
    % elif p.type in ("list", "dict"):
    <span class="hint">JSON, e.g. {{'[1, 2]' if p.type == 'list' else '{"a": 1}'}}</span>
    % end
    % if bad:
    <span class="error">{{error}}</span>
    % end
  </div>
  % end
  % if user.is_admin:
  <button type="submit">Run</button>
  % else:
  <p class="muted">Only admins can run functions.</p>
  % end
</form>
