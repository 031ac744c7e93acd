% rebase('layout')
<p><a href="/schedules">← All schedules</a></p>
% if item:
<h1>Schedule <code>{{item.name}}</code></h1>
<p class="muted">
  {{"declared in code" if item.source == "code" else "added at run time"}}{{", edited here (Reset puts back the code's values)" if item.overridden else ""}}
  % if state:
  · {{"paused" if state["paused"] else "active"}} · runs <a href="/jobs?name={{item.function}}">{{item.function}}</a> on queue {{state["queue"]}}
  · last run {{state["last_run"] or "never"}}
  % else:
  · its function <code>{{item.function}}</code> is not loaded, so it does not run
  % end
</p>
% else:
<h1>Add a schedule</h1>
<p class="muted">A schedule runs a loaded function with the arguments given here whenever its crontab matches. Preview shows its next five runs before you save it.</p>
% end
% if error:
<p class="error" role="alert">{{error}}</p>
% end
<form class="card run" method="post" action="{{'/schedules/' + item.name if item else '/schedules/new'}}">
  <input type="hidden" name="csrf_token" value="{{csrf_token}}">
  % bad = getattr(error, "field", None) or ""
  % if not item:
  <div class="field{{' invalid' if bad == 'name' else ''}}">
    <label for="f-name">name <span class="req">required</span></label>
    <input id="f-name" name="name" type="text" value="{{values['name']}}" maxlength="100">
    <span class="hint">letters, digits, - and _; unique</span>
  </div>
  % end
  <div class="field{{' invalid' if bad == 'function' else ''}}">
    <label for="f-function">function <span class="req">required</span></label>
    <select id="f-function" name="function">
      <option value=""{{!' selected' if not values['function'] else ''}}>—</option>
      % for name in functions:
      <option{{!' selected' if name == values['function'] else ''}}>{{name}}</option>
      % end
    </select>
  </div>
  <div class="field{{' invalid' if bad == 'cron' else ''}}">
    <label for="f-cron">cron <span class="req">required</span></label>
    <input id="f-cron" name="cron" type="text" value="{{values['cron']}}" placeholder="0 2 * * *" maxlength="100">
    <span class="hint">minute hour day month day-of-week{{" · " + words if words else ""}}</span>
  </div>
  <div class="field{{' invalid' if bad.startswith('args') else ''}}">
    <label for="f-args">args <span class="type">JSON object</span></label>
    <textarea id="f-args" name="args" rows="3" placeholder='{"user_id": 1}'>{{values['args']}}</textarea>
    <span class="hint">the function's arguments, checked against its signature; empty for none</span>
  </div>
  <div class="field{{' invalid' if bad == 'queue' else ''}}">
    <label for="f-queue">queue</label>
    <input id="f-queue" name="queue" type="text" value="{{values['queue']}}" maxlength="100">
    <span class="hint">empty: the function's own queue</span>
  </div>
  <div class="field{{' invalid' if bad == 'timezone' else ''}}">
    <label for="f-timezone">timezone</label>
    <input id="f-timezone" name="timezone" type="text" value="{{values['timezone']}}" placeholder="{{default_timezone}}" maxlength="100">
    <span class="hint">an IANA name such as Europe/Berlin; empty: {{default_timezone}} (TIMEZONE)</span>
  </div>
  <div id="preview" class="field">
    <strong>Next five runs</strong>{{" (preview, not saved yet)" if previewed else ""}}:
    % if runs:
    <ol class="runs">
      % for when in runs:
      <li>{{stamp(when)}}</li>
      % end
    </ol>
    % else:
    <span class="muted">{{"none in the next 5 years" if values['cron'] and bad != 'cron' and bad != 'timezone' else "give a valid cron to see them"}}</span>
    % end
  </div>
  <button type="submit" name="action" value="preview" class="secondary">Preview</button>
  <button type="submit" name="action" value="save">{{"Save" if item else "Add schedule"}}</button>
</form>
% if item and (item.source == "api" or item.overridden):
<form method="post" action="/schedules/{{item.name}}/delete">
  <input type="hidden" name="csrf_token" value="{{csrf_token}}">
  <button type="submit" class="secondary">{{"Delete this schedule" if item.source == "api" else "Reset to the code's values"}}</button>
</form>
% end
% if item:
<h2>Changes</h2>
% if changes:
<table class="changes">
  <thead><tr><th>when</th><th>who</th><th>what</th><th>before</th><th>after</th></tr></thead>
  <tbody>
  % for c in changes:
    <tr>
      <td class="nowrap">{{c["at"]}}</td>
      <td>{{c["who"]}}</td>
      <td>{{c["action"]}}</td>
      % for side in (c["before"], c["after"]):
      <td>
      % if side:
        <pre>{{show_json(side)}}</pre>
      % else:
        —
      % end
      </td>
      % end
    </tr>
  % end
  </tbody>
</table>
% else:
<p class="muted">No changes yet: it runs as declared in code.</p>
% end
% end
