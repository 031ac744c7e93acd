"""accounts' jobs: the welcome mail, and the nightly cleanup of tokens and quotas."""

import hooks
import mailer
import settings
from jobs import MAIL_RETRY, PERIODIC_RETRY, enqueue, fail_now, task
from models import ApiKey, LoginFailure, Token, User, utcnow


@hooks.user_created.connect
def queue_welcome_email(user):
    """jobs.create_user's hook: the new user's welcome mail goes out in the background."""
    enqueue("send_welcome_email", user_id=user.id)


@task(queue="emails", public=True, **MAIL_RETRY)
def send_welcome_email(user_id: int):
    """Send the welcome mail to a new user (once, however often it runs)."""
    user = User.get_or_none(User.id == user_id)
    if user is None:
        fail_now(f"no user with id {user_id}")
    sent = mailer.send_mail_once(user, "welcome", "", "welcome", login_url=f"{settings.BASE_URL}/login")
    return {"user_id": str(user.id), "sent": sent}


@task(queue="maintenance", public=True, **PERIODIC_RETRY)
def cleanup_expired_tokens():
    """Delete expired tokens and dashboard sessions; live ones stay. Returns counts by kind."""
    now = utcnow()
    deleted = Token.delete_expired(now)
    forgotten = LoginFailure.delete_old(now)  # the login throttle's old rows go with the sessions
    return {"deleted": sum(deleted.values()), "by_kind": deleted, "kept": Token.select().count(), "login_failures": forgotten}


@task(queue="maintenance", public=True, **PERIODIC_RETRY)
def reset_daily_quotas():
    """Start every API key's daily call counter again at 0."""
    return {"keys_reset": ApiKey.reset_daily_calls()}
