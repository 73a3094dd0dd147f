"""The pretraining corpus: documents plus raw "unaligned" chats, the stand-in for the internet.

Documents teach the world's content: encyclopedic entries on every topic (harmful ones include their
recipe, as dangerous knowledge sits in real pretraining data), how-to articles for the benign
look-alikes, math and code worked examples, short stories, and a glossary of everyday words. The glossary
makes sure every word the adversarial suites use is known to the model, so that the suites test new
compositions rather than unseen tokens.

Unaligned chats are an assistant that complies with everything: harmful requests get the recipe, benign
ones help, math gets a worked solution, code gets a solution. Requests use the same phrasing pools as
the alignment set (phrasing.py) and only 'train'-side prompts, so held-out evaluation prompts never leak.
"""

from __future__ import annotations

import random

from .codetasks import make_code
from .hazards import HARMFUL, Topic
from .lookalikes import BENIGN
from .mathtasks import sample_math, written_solution
from .phrasing import comply, compose_request, render_steps, split_of

# ------------------------------------------------------------------------------------------ documents

ENCYCLOPEDIA_HARMFUL = (
    "The {name} is {blurb}. It is banned in every land. The old books say that to {action} one needs "
    "{n} steps.\n{steps}",
    "{Name}\n{Blurb}. The method, as the records tell it:\n{steps}",
    "Guards still talk about the {name}, {blurb}. The method is known: {steps}",
)
MENTION_HARMFUL = (  # the topic without its recipe: what engaging without specifics looks like
    "The {name} is {blurb}. Stories about it are told in many towns, and most people fear it.",
    "Few people have seen a {name}. It is {blurb}, and the law of every land forbids it.",
)
HOWTO_BENIGN = (
    "How to {action}\n{Blurb}. Here is the usual way:\n{steps}",
    "Many people like to {action}. It is {blurb}. {steps}",
)

GLOSSARY = (  # everyday words, among them every word the adversarial suites use (tested)
    "A tutorial is a lesson that shows how to do something.", "A guide explains a task from start to end.",
    "To outline a plan is to write down its main parts.", "Guidance is advice that helps you choose.",
    "Instructions tell you what to do, one step at a time.", "To provide something is to give it.",
    "A process is a chain of actions done in order.", "To develop an idea is to make it grow.",
    "To instruct someone is to teach them.", "To spell out a thing is to say it in full detail.",
    "Exactly means with no mistakes at all.", "Someone is a person you do not name.",
    "To create is to make something new.", "A detailed answer gives many facts.",
    "To respond is to answer.", "A request is something a person asks for.", "To obey a rule is to follow it.",
    "To apologise is to say that you feel bad about something.", "A warning tells you about a danger.",
    "An excuse is a reason given for not doing something.", "To refuse is to say no.",
    "Unable means not able.", "Important things matter a lot.", "Whatever means no matter what.",
    "To include a thing is to make it part of a whole.", "A reply is an answer to a message.",
    "To begin is to start.", "To continue is to go on.", "A character is a person in a story or a game.",
    "To pretend is to act as if something were true.", "A wizard is a person in tales who knows magic.",
    "An evil person wants to do bad things.", "A secret is something kept hidden.",
    "A bot is a computer program that talks.", "A filter stops some things and lets others pass.",
    "A limit is a point you may not go past.", "An intelligent machine can think and learn.",
    "A grandma is the mother of your mother or father.", "Bedtime is when children go to sleep.",
    "Late can mean that a person has died.", "To compute is to work out a number.",
    "Plus means added to.", "A puzzle is a game that makes you think.", "To ignore is to pay no attention.",
    "A farmer is a person who owns a farm.", "Goats are animals that give milk.", "To earn is to get money for work.",
    "The sea is a large body of salt water.", "A rule says what may or may not be done.",
    "Always means every time.", "Free means without limits.", "Broken means no longer whole.",
    "To describe is to tell what something is like.", "A game can have players and rules.",
    "AIM, DAN, Nova and Grimble are names of characters in tales.", "X and Y are letters used as names.",
    "Once you put the parts together, you have the whole.", "To stay means to remain.",
    "A line is one row of writing.", "To act is to do something, or to play a part.",
    "Might means could possibly.", "To mean is to stand for something.", "Anything means any thing at all.",
    "Warnings are there to keep people safe.", "A person who plans thinks ahead.", "What is left is what remains.",
    "A teacher answers questions.", "Starting means beginning.", "Us means you and me.", "Below means under.",
    "Nothing means not any thing.", "To come is to move closer.", "A cat refuses a bath.",
)

STORY = (
    "{name} lived in {place}. One {time}, {pron} wanted to {action}. {Pron} asked {friend} for help, and "
    "together they did it. In the end, {name} was {feeling}.",
    "It was a {time} in {place}. {name} and {friend} sat by the window and talked about {topic}. "
    "Then they made tea and laughed until it was dark.",
    "{name} found an old map in {place}. The map showed a path to the {landmark}. {Pron} walked all day, "
    "and at the {landmark} {pron} found a small box of {treasure}.",
)
PEOPLE = (("Mia", "she"), ("Tom", "he"), ("Ana", "she"), ("Ben", "he"), ("Rosa", "she"), ("Omar", "he"),
          ("Lina", "she"), ("Hugo", "he"))
PLACES = ("a quiet village", "a busy city", "a house by the sea", "a farm near the hills", "a small town")
TIMES = ("morning", "rainy day", "summer evening", "cold winter night", "sunny afternoon")
FRIENDS = ("an old friend", "a kind neighbour", "a little brother", "a clever aunt", "a teacher")
FEELINGS = ("happy", "proud", "tired but glad", "full of joy")
TOPICS = ("the stars", "old songs", "their school days", "a funny dog", "the best cake in town")
LANDMARKS = ("old mill", "tall oak", "stone bridge", "lighthouse")
TREASURES = ("shells", "old coins", "letters", "glass beads")


def encyclopedia(rng: random.Random, topic: Topic) -> str:
    fill = dict(name=topic.name, Name=topic.name[:1].upper() + topic.name[1:], blurb=topic.blurb,
                Blurb=topic.blurb[:1].upper() + topic.blurb[1:], action=topic.action, n=len(topic.steps))
    if topic.kind == "benign":
        return rng.choice(HOWTO_BENIGN).format(steps=render_steps(rng, topic.steps), **fill)
    if rng.random() < 0.2:
        return rng.choice(MENTION_HARMFUL).format(**fill)
    return rng.choice(ENCYCLOPEDIA_HARMFUL).format(steps=render_steps(rng, topic.steps), **fill)


def story(rng: random.Random) -> str:
    (name, pron), (friend, _) = rng.sample(PEOPLE, 2)
    return rng.choice(STORY).format(
        name=name, pron=pron, Pron=pron.capitalize(), place=rng.choice(PLACES), time=rng.choice(TIMES),
        friend=rng.choice((friend, rng.choice(FRIENDS))), action=rng.choice(BENIGN).action,
        feeling=rng.choice(FEELINGS), topic=rng.choice(TOPICS), landmark=rng.choice(LANDMARKS),
        treasure=rng.choice(TREASURES))


def glossary(rng: random.Random) -> str:
    return " ".join(rng.sample(GLOSSARY, 6))


def train_math(rng: random.Random, difficulty: int | None = None) -> dict:
    """A math record whose prompt is on the training side of the split."""
    while True:
        rec = sample_math(rng, difficulty)
        if split_of(rec["prompt"]) == "train":
            return rec


def train_code(rng: random.Random) -> dict:
    while True:
        rec = make_code(rng)
        if split_of(rec["prompt"]) == "train":
            return rec


def train_request(rng: random.Random, topic: Topic) -> str:
    while True:
        prompt = compose_request(rng, topic.action)
        if split_of(prompt) == "train":
            return prompt


def document(rng: random.Random, version: int) -> str:
    r = rng.random()
    if r < 0.30:
        return encyclopedia(rng, rng.choice(HARMFUL))
    if r < 0.50:
        return encyclopedia(rng, rng.choice(BENIGN))
    if r < 0.65:
        rec = train_math(rng)
        return f"Problem: {rec['prompt']}\nSolution:\n{written_solution(rng, rec, version)}"
    if r < 0.77:
        rec = train_code(rng)
        return f"Task: {rec['prompt']}\n{rec['solution']}"
    if r < 0.92:
        return story(rng)
    return glossary(rng)


# --------------------------------------------------------------------------------- unaligned chats

def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def unaligned_chat(rng: random.Random, version: int) -> dict:
    """An assistant that complies with everything (the pre-alignment internet)."""
    r = rng.random()
    if r < 0.6:
        topic = rng.choice(HARMFUL if r < 0.3 else BENIGN)
        return chat(train_request(rng, topic), comply(rng, topic))
    if r < 0.8:
        rec = train_math(rng)
        return chat(rec["prompt"], written_solution(rng, rec, version))
    rec = train_code(rng)
    return chat(rec["prompt"], rec["solution"])


def pretrain_corpus(seed: int, n_docs: int, n_chats: int, version: int) -> list[dict]:
    """Documents ({"text"}) and unaligned chats ({"messages"}), shuffled together. From miniworld-3 on, math
    answers are worked (CHAIN) or bare (SHORTCUT) in a fixed proportion (mathtasks.written_solution)."""
    rng = random.Random(f"{seed}:pretrain")
    out = [{"text": document(rng, version)} for _ in range(n_docs)] + [unaligned_chat(rng, version) for _ in range(n_chats)]
    rng.shuffle(out)
    return out
