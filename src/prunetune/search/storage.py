"""Where a study lives: Optuna's RDB storage (a SQLite file, or PostgreSQL shared by many workers)
with heartbeats and retry of trials whose worker died."""

from __future__ import annotations

import warnings
from typing import Any

from ..errors import PrunetuneError


def optuna_module():
    """Optuna, quiet; one error line when it is not installed."""
    try:
        import optuna
    except ImportError:
        raise PrunetuneError("prunetune sweep needs optuna; pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: str, spec):
    """An Optuna RDB storage with heartbeats and retry of failed (killed) trials."""
    optuna_module()
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # concurrent workers on one machine wait for the lock
    else:
        kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats are marked experimental in Optuna
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=spec.heartbeat_s, grace_period=3 * spec.heartbeat_s,
                              heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=spec.retries))
    except ImportError as e:
        raise PrunetuneError(f"--storage: the database driver is missing ({e}); for PostgreSQL: pip install 'prunetune[postgres]'") from None
    except Exception as e:  # sqlalchemy raises many types for a bad or unreachable URL
        from sqlalchemy.engine import make_url

        try:
            u = make_url(url)
            where = f"{u.host or 'localhost'}:{u.port or 'default port'}" if u.drivername.split("+")[0] != "sqlite" else u.database
        except Exception:
            where = url.split("@")[-1]
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:160]
        raise PrunetuneError(f"--storage: cannot open the study storage at {where} ({first}); check the URL and that the server runs") from None


def redact(url: str) -> str:
    """The storage URL as logged: user and password hidden."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def finished(study) -> int:
    """Trials that count towards search.trials: complete or stopped early, all workers together."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))
