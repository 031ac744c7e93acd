"""litejobs demo data: realistic users, posts, likes, comments, shares and hashtags.

Other apps add theirs through the hooks.demo_data event (knowledge: its sandbox ingest's documents).

`python -m apps.demo --users N --posts M` calls fill() and fill_courses(). The data looks like a
small social app's: a few prolific authors and many quiet ones, hashtags that
follow a long tail (and a couple that trend in the last day), likes that come
in the hours after a post, and every time spread over the last weeks. Rows go
in with bulk inserts, so 10k users and 100k posts take seconds.
"""

import bisect
import datetime
import itertools
import random

from peewee import fn

import hooks
from apps.content.models import Comment, Like, Post, PostTag, Share, hashtags
from apps.courses.models import Course, Enrollment, LessonCompletion
from models import User, bulk_insert, chunked, db, utcnow

FIRST_NAMES = (
    "Ada Alan Amir Ana Anna Aria Ben Bruno Carla Chen Chloe Dan Dara Elena Emil Eva Farid Finn Grace Hana Hugo "
    "Ines Ivan Jana Jonas Julia Kai Kenji Lara Leila Leo Lina Luca Maya Mei Mila Nadia Nils Noah Omar Oscar Paula "
    "Priya Rafael Rosa Sami Sara Sofia Tariq Theo Tomas Uma Vera Yara Yusuf Zoe"
).split()
LAST_NAMES = (
    "Almeida Bauer Becker Costa Dubois Eriksen Fischer Garcia Haddad Hoffmann Ito Jensen Kaya Khan Kowalski Larsen "
    "Lopez Martin Meyer Moreau Nakamura Novak Okafor Olsen Petrov Rahman Rossi Santos Schmidt Silva Tanaka Weber "
    "Wong Yilmaz Zhang"
).split()
# A long tail of hashtags: the first ones are used far more than the last.
TAGS = (
    "python javascript rust golang devops docker kubernetes linux opensource webdev frontend backend database "
    "postgres sqlite redis cloud aws security privacy ai machinelearning datascience design ux productivity "
    "remotework startup career learning books music photography travel food coffee running cycling hiking "
    "gaming movies art science space climate gardening cooking fitness yoga football basketball chess "
    "history languages writing poetry podcast news weekend mondaymotivation tbt throwback sunset nature cats dogs"
).split()
TRENDING_NOW = ("launchday", "hackathon")  # hot in the last day, so trending has a story to tell
TOPICS = (
    "Just shipped a new feature",
    "Reading a great article about {tag}",
    "Anyone else spending the evening on {tag}?",
    "Finally fixed that bug that haunted me all week",
    "Coffee, music and a long list of todos",
    "Three things I learned about {tag} today",
    "Weekend plans: a bit of {tag} and a lot of rest",
    "Hot take: {tag} is underrated",
    "Looking for recommendations on {tag}",
    "Our team meetup was a blast",
    "Short thread on what went wrong in yesterday's deploy",
    "This view from my window today",
    "Trying something new with {tag} this week",
    "Grateful for this community",
)
COMMENTS = ("Great post!", "So true.", "Thanks for sharing", "Interesting, tell me more", "Haha, same here", "+1", "Love this")


def _zipf_cumulative(n, exponent):
    """Cumulative weights of ranks 1..n for random.choices: rank r weighs 1 / r^exponent."""
    return list(itertools.accumulate(1 / (rank**exponent) for rank in range(1, n + 1)))


def _pick(rng, cumulative):
    return bisect.bisect_left(cumulative, rng.random() * cumulative[-1])


def _body(rng, tag_weights):
    topic = rng.choice(TOPICS)
    count = rng.choices((0, 1, 2, 3), weights=(25, 40, 25, 10))[0]
    tags = {TAGS[_pick(rng, tag_weights)] for _ in range(count)}
    text = topic.format(tag=next(iter(tags)) if tags and "{tag}" in topic else "it")
    return " ".join([text] + [f"#{tag}" for tag in sorted(tags)])


def fill(users, posts, weeks=4, seed=None, now=None):
    """Add `users` users and `posts` posts (with likes, comments, shares, hashtags) over the past `weeks`.

    Returns the counts of rows added, by table.
    """
    rng = random.Random(seed)
    now = now or utcnow()
    start = now - datetime.timedelta(weeks=weeks)
    span = (now - start).total_seconds()
    counts = {}

    # Users: 40% were there before the window, the rest joined during it.
    offset = User.select(fn.MAX(User.id)).scalar() or 0
    user_rows = []
    for number in range(offset + 1, offset + users + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        if rng.random() < 0.4:
            joined = start - datetime.timedelta(days=rng.uniform(1, 365))
        else:
            joined = start + datetime.timedelta(seconds=rng.uniform(0, span))
        email = f"{first}.{last}{number}@example.com".lower()
        user_rows.append((email, f"{first} {last}", rng.random() > 0.03, joined))
    fields = [User.email, User.name, User.active, User.created_at]
    with db.atomic():
        user_ids = []
        for chunk in chunked(user_rows, 500):
            user_ids += [row[0] for row in User.insert_many(chunk, fields=fields).returning(User.id).tuples()]
    joined_at = [row[3] for row in user_rows]
    counts["users"] = len(user_ids)

    # Posts: a few prolific authors, many quiet ones; bodies with long-tail hashtags.
    author_weights = _zipf_cumulative(len(user_ids), 0.8)
    order = list(range(len(user_ids)))
    rng.shuffle(order)  # the prolific ones are not simply the oldest accounts
    tag_weights = _zipf_cumulative(len(TAGS), 1.1)
    post_rows = []
    for _ in range(posts):
        author = order[_pick(rng, author_weights)]
        earliest = max(start, joined_at[author])
        created = earliest + datetime.timedelta(seconds=rng.uniform(0, max((now - earliest).total_seconds(), 1)))
        body = _body(rng, tag_weights)
        if created > now - datetime.timedelta(days=1) and rng.random() < 0.3:
            body += f" #{rng.choice(TRENDING_NOW)}"
        post_rows.append((user_ids[author], body, created))
    post_rows.sort(key=lambda row: row[2])
    with db.atomic():
        before = Post.select(fn.MAX(Post.id)).scalar() or 0
        bulk_insert(Post, [Post.author, Post.body, Post.created_at], post_rows)
        # Ids in insertion order. Only this run writes posts by its new users.
        new = (Post.id > before) & Post.author.between(min(user_ids), max(user_ids))
        post_ids = [post_id for (post_id,) in Post.select(Post.id).where(new).order_by(Post.id).tuples()]
    counts["posts"] = len(post_ids)

    tag_rows = [(post_id, tag, created) for post_id, (_, body, created) in zip(post_ids, post_rows) for tag in hashtags(body)]
    # Some people react a lot, most now and then: the same long tail as authors.
    reactor_weights = _zipf_cumulative(len(user_ids), 1.2)
    likes, comments, shares = [], [], []
    for post_id, (_, _, created) in zip(post_ids, post_rows):
        # Reactions arrive in the hours after a post; a few posts take off.
        popularity = rng.paretovariate(1.6) - 1
        for model_rows, mean in ((likes, 2.5), (comments, 0.6), (shares, 0.2)):
            n = min(int(popularity * mean + rng.random() * mean), len(user_ids), 500)
            people = [order[_pick(rng, reactor_weights)] for _ in range(n)]
            if model_rows is likes:
                people = set(people)  # one like per person and post
            for person in people:
                when = created + datetime.timedelta(hours=rng.expovariate(1 / 8))
                if when > now:
                    continue  # still to come
                if model_rows is comments:
                    model_rows.append((user_ids[person], post_id, rng.choice(COMMENTS), when))
                else:
                    model_rows.append((user_ids[person], post_id, when))
    with db.atomic():
        for model, rows, fields in (
            (PostTag, tag_rows, [PostTag.post, PostTag.tag, PostTag.created_at]),
            (Like, likes, [Like.user, Like.post, Like.created_at]),
            (Comment, comments, [Comment.user, Comment.post, Comment.body, Comment.created_at]),
            (Share, shares, [Share.user, Share.post, Share.created_at]),
        ):
            bulk_insert(model, fields, rows)
    counts.update(hashtags=len(tag_rows), likes=len(likes), comments=len(comments), shares=len(shares))
    return counts


# -- Courses and enrollments -----------------------------------------------------
COURSES = {
    "Python for data analysis": ("Setting up", "Numbers and strings", "Lists and dicts", "Reading CSV files",
                                 "pandas basics", "Grouping and joining", "Charts", "A small project"),
    "SQL from zero": ("What a table is", "SELECT", "WHERE and ORDER BY", "Joins", "GROUP BY", "Indexes"),
    "Photography basics": ("Light", "Exposure", "Composition", "Editing", "Sharing your work"),
    "مقدمه‌ای بر خوشنویسی": ("ابزارها", "حروف پایه", "اتصال حروف", "تمرین نهایی"),
}


def fill_courses(enrollments=300, finished=20, seed=None, now=None):
    """Add the COURSES with their lessons and enroll random users, with lessons done along the way.

    `finished` of the enrollments have every lesson done; their ids are
    returned so that the caller queues recalculate_course_progress, which
    issues their certificates. Returns (counts by table, ids of those finished).
    """
    rng = random.Random(seed)
    now = now or utcnow()
    user_ids = [user_id for (user_id,) in User.select(User.id).where(User.active == True).tuples()]  # noqa: E712
    with db.atomic():
        courses = [Course.create_with_lessons(title, lessons) for title, lessons in COURSES.items()]
    lessons = {c.id: [lesson.id for lesson in c.ordered_lessons()] for c in courses}
    pairs = {(rng.choice(user_ids), rng.choice(courses).id) for _ in range(min(enrollments, len(user_ids)))}
    rows, completions, done_ids = [], [], []
    with db.atomic():
        for number, (user_id, course_id) in enumerate(sorted(pairs)):
            course_lessons = lessons[course_id]
            done = len(course_lessons) if number < finished else rng.randrange(len(course_lessons))
            enrolled = now - datetime.timedelta(days=rng.uniform(1, 60))
            enrollment = Enrollment.create(
                user=user_id, course=course_id, created_at=enrolled, progress=done * 100 // len(course_lessons)
            )
            rows.append(enrollment.id)
            for lesson_id in course_lessons[:done]:
                when = enrolled + datetime.timedelta(days=rng.uniform(0, 14))
                completions.append((enrollment.id, lesson_id, min(when, now)))
            if done == len(course_lessons):
                done_ids.append(enrollment.id)
        bulk_insert(
            LessonCompletion,
            [LessonCompletion.enrollment, LessonCompletion.lesson, LessonCompletion.completed_at],
            completions,
        )
    counts = {"courses": len(courses), "enrollments": len(rows), "lessons_done": len(completions)}
    return counts, done_ids


def main(argv=None):
    """`python -m apps.demo`: fill the database of the content and courses apps with demo data."""
    import argparse
    import sys

    import jobs
    import web

    parser = argparse.ArgumentParser(prog="python -m apps.demo", description="fill realistic users, posts, likes, comments and shares")
    parser.add_argument("--users", type=int, default=1000, help="how many users (default 1000)")
    parser.add_argument("--posts", type=int, default=10000, help="how many posts (default 10000)")
    parser.add_argument("--weeks", type=int, default=4, help="spread over this many past weeks (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for the same data every time")
    args = parser.parse_args(argv)
    web.setup_logging()
    web.prepare()
    if args.users < 1 or args.posts < 0 or args.weeks < 1:
        sys.exit("litejobs: demo-data needs --users 1 or more, --posts 0 or more and --weeks 1 or more")
    counts = fill(args.users, args.posts, weeks=args.weeks, seed=args.seed)
    course_counts, finished = fill_courses(seed=args.seed)
    counts.update(course_counts)
    for enrollment_id in finished:  # their certificates are made once a consumer runs
        jobs.enqueue("recalculate_course_progress", enrollment_id=enrollment_id)
    for _, added in hooks.demo_data.send(seed=args.seed):  # the other loaded apps' demo data
        counts.update(added)
    print(", ".join(f"{n} {what}" for what, n in counts.items()))


if __name__ == "__main__":
    main()
