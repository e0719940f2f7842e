"""What the staging stack costs per hour, printed before anything billable is created.

An estimate from on-demand list prices for the template's own sizes: the application instances ×
desired capacity, RDS (× 2 when Multi-AZ), the ElastiCache primary and replica, the MSK brokers, the
ALB and the NAT gateway. Storage, data transfer and ALB/MSK capacity units are not included.

The prices are ap-northeast-2 (Seoul) on-demand list prices in USD per hour as recalled on 2026-12-03.
They were not fetched: AWS's Price List API is not reachable from where this was written, so check them
against the price pages before budgeting, and override any of them with ``environment.aws.hourly_prices``.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2026-12-03 (recalled, not fetched)"
PRICES: dict[str, float] = {
    "t3.large": 0.104,
    "t3.xlarge": 0.208,
    "m5.large": 0.118,
    "m5.xlarge": 0.236,
    "db.r5.large": 0.29,
    "db.r5.xlarge": 0.58,
    "db.r5.2xlarge": 1.16,
    "cache.r5.large": 0.258,
    "kafka.m5.large": 0.252,
    "alb": 0.0225,
    "nat_gateway": 0.059,
}
#: The template's defaults (infra/aws/stack.yaml), for parameters the profile leaves out.
DEFAULTS = {
    "InstanceType": "t3.large",
    "DbInstanceClass": "db.r5.large",
    "CacheNodeType": "cache.r5.large",
    "KafkaInstanceType": "kafka.m5.large",
    "CreateCache": "true",
    "CreateKafka": "true",
}


@dataclass(frozen=True)
class Estimate:
    lines: list[tuple[str, int, float]]  # (what, count, USD per hour each)
    unpriced: list[str]

    @property
    def hourly_usd(self) -> float:
        return sum(n * p for _, n, p in self.lines)

    def sentence(self, stack: str) -> str:
        parts = ", ".join(f"{n} × {what} ${p:.3f}" for what, n, p in self.lines)
        text = f"stack {stack} costs about ${self.hourly_usd:.2f}/hour on demand ({parts}; prices of {PRICES_AS_OF})"
        if self.unpriced:
            text += f"; no price for {', '.join(self.unpriced)}"
        return text


def estimate(parameters: dict[str, str], desired_capacity: int, overrides: dict[str, float] | None = None) -> Estimate:
    """The hourly estimate for a stack created with these template parameters."""
    prices = {**PRICES, **(overrides or {})}
    p = {**DEFAULTS, **parameters}
    wanted = [
        (p["InstanceType"], int(p.get("DesiredCapacity", desired_capacity))),
        (p["DbInstanceClass"], 2),  # Multi-AZ: a standby of the same class
        ("alb", 1),
        ("nat_gateway", 1),
    ]
    if p["CreateCache"] == "true":
        wanted.append((p["CacheNodeType"], 2))  # primary and one replica
    if p["CreateKafka"] == "true":
        wanted.append((p["KafkaInstanceType"], 3))
    lines, unpriced = [], []
    for what, n in wanted:
        if what in prices:
            lines.append((what, n, prices[what]))
        else:
            unpriced.append(what)
    return Estimate(lines, unpriced)
