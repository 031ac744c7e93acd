% rebase('layout')
<h1>Jobs</h1>
<form class="filters" method="get" action="/jobs">
  <label>Function
    <select name="name">
      <option value="">any</option>
      % for n in names:
      <option{{!' selected' if n == name else ''}}>{{n}}</option>
      % end
    </select>
  </label>
  <label>Status
    <select name="status">
      <option value="">any</option>
      % for s in statuses:
      <option{{!' selected' if s == status else ''}}>{{s}}</option>
      % end
    </select>
  </label>
  <button type="submit">Filter</button>
  <label class="grow">Job id <input type="search" name="id" placeholder="paste a job id" value="{{not_found or ''}}"></label>
  <button type="submit">Find</button>
</form>
% if not_found:
<p class="error">No job with id <code>{{not_found}}</code>.</p>
% end
<div id="job-list"{{!' data-refresh="5"' if first_page else ''}}>
% if not jobs:
<p class="empty">No jobs{{' match these filters' if (name or status) else ' yet'}}. <a href="/run">Run one →</a></p>
% else:
<table class="jobs">
  <thead><tr><th>function</th><th>status</th><th>queue</th><th>enqueued</th><th class="r">duration</th><th>id</th></tr></thead>
  <tbody>
  % for job in jobs:
    <tr>
      <td><a href="/jobs/{{job.id}}">{{job.name}}</a></td>
      <td><span class="status status-{{job.status}}">{{job.status}}</span></td>
      <td>{{job.queue}}</td>
      <td class="nowrap" title="{{stamp(job.enqueued_at)}}">{{ago(job.enqueued_at)}}</td>
      <td class="r">{{took(job.duration_ms) if job.duration_ms is not None else ""}}</td>
      <td><a class="mono" href="/jobs/{{job.id}}">{{job.id[:8]}}</a></td>
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
