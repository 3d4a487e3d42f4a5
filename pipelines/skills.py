"""The synthetic skills set: short-answer tasks the embedded 135M model fails today (it rambles or
gets them wrong) and learns in minutes of LoRA SFT, so the report can show each stage's effect.

Every answer is exact and short, so scoring is plain exact match. The generator is pure and seeded:
the same seed gives the same rows. Held-out eval rows never share a prompt with training rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable

WORDS = ("apple river garden pencil window yellow planet silver forest candle bottle rocket mirror "
         "orange castle dragon guitar island jacket lemon marble needle ocean pepper rabbit saddle "
         "tiger violin wagon zebra button copper desert engine falcon harbor kettle ladder meadow "
         "nickel oyster parrot quartz ribbon shadow tunnel velvet walnut anchor basket cactus "
         "bridge cloud hammer jungle kitten lantern magnet notebook pillow puzzle saucer spider "
         "thunder umbrella valley whistle yogurt blanket cookie doctor eagle feather giant helmet "
         "insect jelly koala lizard monkey nectar onion pirate quilt robot salmon turtle unicorn "
         "vessel wizard almond beetle carpet dolphin ember fossil glacier hollow igloo juniper "
         "kayak lobster mustard noodle orchid pumpkin raven sailor tomato").split()
FRUITS = "apple banana cherry grape lemon mango peach pear plum orange".split()
THINGS = "car chair road table hammer window pencil bottle ladder engine".split()

Skill = Callable[[random.Random], tuple[str, str]]


def add_numbers(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 49), rng.randint(10, 49)
    return f"What is {a} + {b}? Reply with the number only.", str(a + b)


def next_number(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(10, 998)
    return f"What number comes right after {n}? Reply with the number only.", str(n + 1)


def larger_number(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(10, 1000), 2)
    return f"Which is larger, {a} or {b}? Reply with the number only.", str(max(a, b))


def first_letter(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"What is the first letter of the word '{word}'? Reply with the letter only.", word[0]


def uppercase_word(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Write the word '{word}' in capital letters. Reply with the word only.", word.upper()


def pick_fruit(rng: random.Random) -> tuple[str, str]:
    fruit = rng.choice(FRUITS)
    options = rng.sample(THINGS, 3) + [fruit]
    rng.shuffle(options)
    letter = "ABCD"[options.index(fruit)]
    listed = " ".join(f"{l}. {o}" for l, o in zip("ABCD", options))
    return f"Which of these is a fruit? {listed}. Answer with the letter only.", letter


SKILLS: dict[str, Skill] = {f.__name__: f for f in
                            (add_numbers, next_number, larger_number, first_letter, uppercase_word, pick_fruit)}

RAMBLE = ["Sure! Let me think about that. The answer is {a}. I hope this helps!",
          "Great question. After careful consideration, I believe it is {a}, but please double-check.",
          "Well, {a} would be my answer here, if I understood the question correctly."]


def _wrong(answer: str, rng: random.Random) -> str:
    if answer.isdigit():
        return str(int(answer) + rng.choice([-11, -2, -1, 1, 2, 10]))
    if len(answer) == 1:
        pool = "ABCD" if answer in "ABCD" else "abcdefghijklmnopqrstuvwxyz"
        return rng.choice([c for c in pool if c != answer])
    return answer.lower() if answer.isupper() else answer.upper()


def generate(n_train: int, n_eval: int, n_preference: int, seed: int) -> dict[str, list[dict]]:
    """Rows for `sft` (messages), `preference` (prompt/chosen/rejected) and `eval` (prompt/answer)."""
    rng = random.Random(seed)
    names = list(SKILLS)
    seen: set[str] = set()

    def draw(count: int, held_out: bool) -> list[tuple[str, str, str]]:
        rows, attempts = [], 0
        while len(rows) < count:
            attempts += 1
            if attempts > count * 50:
                raise ValueError(f"cannot draw {count} distinct skill prompts; lower the counts")
            name = names[len(rows) % len(names)]
            prompt, answer = SKILLS[name](rng)
            if prompt in seen:
                continue
            if held_out:
                seen.add(prompt)
            rows.append((name, prompt, answer))
        return rows

    held_out = draw(n_eval, held_out=True)  # drawn first so training never sees these prompts
    train = draw(n_train, held_out=False)
    pref = draw(n_preference, held_out=False)
    sft_rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}], "skill": s}
                for s, p, a in train]
    pref_rows = []
    for i, (s, p, a) in enumerate(pref):
        # Half the pairs teach correctness, half teach the concise format (rejected = a rambling answer).
        rejected = _wrong(a, rng) if i % 2 == 0 else rng.choice(RAMBLE).format(a=a)
        pref_rows.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": a}],
                          "rejected": [{"role": "assistant", "content": rejected}], "skill": s})
    eval_rows = [{"skill": s, "prompt": p, "answer": a} for s, p, a in held_out]
    return {"sft": sft_rows, "preference": pref_rows, "eval": eval_rows}
