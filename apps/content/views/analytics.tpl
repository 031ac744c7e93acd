% rebase('layout')
<h1>Analytics</h1>
<section class="card">
  <div class="head">
    <h2>Trending hashtags{{!' <span class="legend">last %d h, counted %s</span>' % (snapshot.window_hours, ago(snapshot.computed_at)) if snapshot else ''}}</h2>
    <form method="post" action="/schedules/update_trending_hashtags/run">
      <input type="hidden" name="csrf_token" value="{{csrf_token}}">
      <button type="submit" class="secondary">Count now</button>
    </form>
  </div>
  % if trending:
  {{!trending}}
  % else:
  <p class="empty">Nothing counted yet: <code>update_trending_hashtags</code> runs every hour (or press Count now).</p>
  % end
</section>

<div class="head">
  <h2>Daily numbers</h2>
  <p class="filters-inline">
  % for d in ("7", "30", "90", "365"):
    <a href="/analytics?days={{d}}"{{!' class="active"' if d == days else ''}}>{{d}} days</a>{{" · " if d != "365" else ""}}
  % end
  </p>
  <form method="post" action="/schedules/generate_content_analytics/run">
    <input type="hidden" name="csrf_token" value="{{csrf_token}}">
    <button type="submit" class="secondary">Recompute now</button>
  </form>
</div>
% if not daily:
<p class="empty">No daily numbers yet: <code>generate_content_analytics</code> computes them every night at 04:00 (or press Recompute now). <code>python web.py demo-data</code> fills some.</p>
% else:
<div class="charts">
% for heading, note, svg in daily:
  <section class="card">
    <h2>{{heading}} <span class="legend">{{note}}</span></h2>
    {{!svg}}
  </section>
% end
</div>
% end
