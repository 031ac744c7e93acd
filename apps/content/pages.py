"""content's dashboard pages: analytics charts and one post with its media."""


from bottle import Bottle, abort, request

import charts
from apps.content.models import DailyAnalytics, Media, Post, TrendingSnapshot
from dashboard import page, render

pages = Bottle()


def route(path, method="GET"):
    return page(path, method, routes=pages)


# -- Analytics ----------------------------------------------------------------------------
# (field, heading, what the heading sums up: the total over the days, or the last day)
DAILY_SERIES = (
    ("active_users", "Active users", "last"),
    ("new_users", "New users", "total"),
    ("posts", "Posts", "total"),
    ("likes", "Likes", "total"),
    ("comments", "Comments", "total"),
    ("shares", "Shares", "total"),
    ("mean_engagement", "Mean engagement per post", "last"),
)


@route("/analytics")
def analytics():
    """Trending hashtags and the daily numbers, as charts."""
    days = request.query.getunicode("days") or "30"
    if days not in ("7", "30", "90", "365"):
        abort(400, "days: choose 7, 30, 90 or 365")
    snapshot = TrendingSnapshot.latest()
    trending = snapshot.to_dict()["hashtags"] if snapshot else []
    rows = [row.to_dict() for row in DailyAnalytics.recent(int(days))]
    step = max(len(rows) // 6, 1)
    labels = [(i, row["date"][5:]) for i, row in enumerate(rows) if i % step == 0]
    daily = []
    for key, heading, summary in DAILY_SERIES if rows else ():
        values = [row[key] for row in rows]
        if summary == "total":
            note = f"{sum(values):g} in {len(rows)} days"
        else:
            note = f"{values[-1]:g} on {rows[-1]['date']}"
        svg = charts.line(
            values,
            labels=labels,
            titles=[f"{row['date']}: {row[key]:g}" for row in rows],
            width=540,
            height=150,
            label=f"{heading} per day",
        )
        daily.append((heading, note, svg))
    return render(
        "analytics",
        title="Analytics",
        days=days,
        snapshot=snapshot,
        trending=charts.hbars([(f"#{t['tag']}", t["count"]) for t in trending], label="Trending hashtags") if trending else None,
        daily=daily,
    )




def _row_id(raw):
    """A database id from the path ("12"), or None."""
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None


@route("/posts/<post_id>")
def post_detail(post_id):
    """One post: its text, counts and media, with thumbnails once they are ready."""
    row_id = _row_id(post_id)
    post = None if row_id is None else Post.get_or_none(Post.id == row_id)
    if post is None:
        abort(404, f"no post with id {post_id!r}")
    items = list(Media.of_post(post.id))
    return render(
        "post",
        title=f"Post {post.id}",
        post=post,
        data=post.to_dict(),
        media=items,
        live=any(item.status == "processing" for item in items),
    )
