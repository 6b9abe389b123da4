"""Warm-up plans: stages of daily volume caps rising over about 30 days.

A plan is a list of [days, daily cap] stages. Day 0 is the day the warm-up started (whole 24-hour
periods since started_at); once the last stage is over the warm-up is complete and the IP has no cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from envoi.ips.errors import InvalidInput

DAY = 86400


@dataclass(frozen=True)
class Stage:
    number: int  # 1-based, Mailgun's stage_number
    first_day: int
    days: int
    cap: int


def parse_plan(text: str) -> list[list[int]]:
    """'2x50,2x100,…' (or '50,100' = one day each) -> [[2, 50], [2, 100], …]."""
    plan = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        days, sep, cap = part.partition("x")
        try:
            stage = [int(days), int(cap)] if sep else [1, int(days)]
        except ValueError as ex:
            raise InvalidInput(f"warm-up plan stage '{part}' is not DAYSxCAP") from ex
        if stage[0] < 1 or stage[1] < 1:
            raise InvalidInput(f"warm-up plan stage '{part}' needs at least 1 day and a cap of at least 1")
        plan.append(stage)
    if not plan:
        raise InvalidInput("warm-up plan is empty")
    return plan


def stages(plan: list[list[int]]) -> list[Stage]:
    out, first = [], 0
    for number, (days, cap) in enumerate(plan, start=1):
        out.append(Stage(number, first, int(days), int(cap)))
        first += int(days)
    return out


def day_no(started_at: datetime, now: datetime) -> int:
    return max(0, int((now - started_at).total_seconds() // DAY))


def stage_on(plan: list[list[int]], day: int) -> Stage | None:
    """The stage in force on `day`, or None once the plan is complete."""
    for stage in stages(plan):
        if stage.first_day <= day < stage.first_day + stage.days:
            return stage
    return None


def seconds_to_next_day(started_at: datetime, now: datetime) -> float:
    elapsed = (now - started_at).total_seconds()
    return DAY - (elapsed % DAY) if elapsed >= 0 else -elapsed


def rfc2822(dt: datetime) -> str:
    return dt.strftime("%a, %d %b %Y %H:%M:%S GMT")


def progress(address: str, warmup: dict, usage: list[dict], now: datetime, *, details: bool = False) -> dict:
    """Mailgun's warm-up shape (mailgun-go mtypes/ip_warmups.go), plus today's figures."""
    plan = warmup["plan"]
    started = warmup["started_at"]
    today = day_no(started, now)
    all_stages = stages(plan)
    stage = stage_on(plan, today)
    used_by_day = {u["day_no"]: u["used"] for u in usage}
    if stage is None:  # complete: report the last stage as done
        last = all_stages[-1]
        item = {"ip": address, "sent_within_stage": "0", "throttle": 0, "stage_number": len(all_stages) + 1,
                "stage_start_volume": last.cap, "stage_start_time": rfc2822(started + timedelta(days=last.first_day
                                                                                          + last.days)),
                "stage_volume_limit": 0, "complete": True}
    else:
        sent = sum(n for d, n in used_by_day.items() if stage.first_day <= d <= today)
        item = {"ip": address, "sent_within_stage": str(sent), "throttle": stage.cap,
                "stage_number": stage.number, "stage_start_volume": stage.cap,
                "stage_start_time": rfc2822(started + timedelta(days=stage.first_day)),
                "stage_volume_limit": stage.cap * stage.days, "complete": False,
                "sent_today": used_by_day.get(today, 0), "daily_cap": stage.cap}
    if not details:
        return item
    current = stage.number if stage else len(all_stages) + 1
    history = []
    for s in all_stages:
        if s.number > current:
            break
        entry = {"first_updated_at": rfc2822(started + timedelta(days=s.first_day)), "limit": s.cap,
                 "sent": sum(n for d, n in used_by_day.items() if s.first_day <= d < s.first_day + s.days)}
        if s.number < current:
            entry["completed_at"] = rfc2822(started + timedelta(days=s.first_day + s.days))
        history.append(entry)
    body = {k: v for k, v in item.items() if k != "ip"}
    body.update({"stage_started_at": item["stage_start_time"], "plan_started_at": rfc2822(started),
                 "plan_last_updated_at": rfc2822(warmup["updated_at"]), "total_stages": len(all_stages),
                 "stage_history": history, "plan": plan})
    return {"ip": address, "details": body}
