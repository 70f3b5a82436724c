"""Generated run names in dstack's style: `<adjective>-<animal>-<n>`."""

from __future__ import annotations

import random
from typing import Container

_ADJECTIVES = (
    "brave bright calm clever cool eager fancy fast fine gentle happy jolly keen kind lively "
    "lucky mighty nice proud quick quiet rapid sharp shiny smart swift tidy warm wise witty"
).split()
_ANIMALS = (
    "ant bat bear bee bison cat cobra crab crow deer dog dove eagle eel elk fox frog goat "
    "hawk horse koala lamb lion lynx mole moose mule newt owl panda puma rat seal shark "
    "sheep snail swan tiger toad wasp whale wolf yak zebra"
).split()


def generate_run_name(taken: Container[str], rng: random.Random | None = None) -> str:
    rng = rng or random.Random()
    while True:
        name = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_ANIMALS)}-{rng.randint(1, 99)}"
        if name not in taken:
            return name
