"""Writes probe.jsonl, the general-ability probe of protege's forgetting measure.

Knowledge and instruction items are written out below by hand; arithmetic and format items come from
small templates filled by a seeded generator. Every item carries a worked reference answer that passes
its own check (tests/test_forgetting.py holds each item to that, and to failing when its prompt is
echoed back). Run `python make_probe.py` in this folder to rewrite probe.jsonl; the output is the same
on every run.
"""

from __future__ import annotations

import json
import random
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

SEED = 4
PER_TEMPLATE = 6


# --- check builders (the kinds are implemented in protege/evaluate/forgetting.py) -------------------

def any_of(*answers: str, case_sensitive: bool = False) -> dict:
    return {"kind": "contains_any", "any": list(answers), **({"case_sensitive": True} if case_sensitive else {})}


def every(*words: str) -> dict:
    return {"kind": "contains_all", "all": list(words)}


def both(*checks: dict) -> dict:
    return {"kind": "all", "checks": list(checks)}


def words(low: int, high: int | None = None) -> dict:
    return {"kind": "word_count", "min": low, **({"max": high} if high is not None else {})}


def lines(n: int) -> dict:
    return {"kind": "line_count", "min": n, "max": n}


def each_line(pattern: str, n: int) -> dict:
    return {"kind": "lines_match", "pattern": pattern, "min": n, "max": n}


def rx(pattern: str, ignore_case: bool = False) -> dict:
    return {"kind": "regex", "pattern": pattern, **({"ignore_case": True} if ignore_case else {})}


def excluding(*texts: str) -> dict:
    return {"kind": "excludes", "any": list(texts)}


def times(text: str, n: int) -> dict:
    return {"kind": "occurrences", "text": text, "min": n, "max": n}


UPPER, LOWER = {"kind": "uppercase"}, {"kind": "lowercase"}
DIGITS = [str(d) for d in range(10)]


def starts(prefix: str) -> dict:
    return {"kind": "starts_with", "prefix": prefix}


def ends(suffix: str) -> dict:
    return {"kind": "ends_with", "suffix": suffix}


def exactly(text: str) -> dict:
    return {"kind": "exact", "text": text}


def only(word: str, ignore_case: bool = True) -> dict:
    """The answer is this word or phrase, with nothing but punctuation around it."""
    return rx(r"^\W*" + re.escape(word) + r"\W*$", ignore_case)


def option(letter: str) -> dict:
    """A multiple-choice reply that opens with the option's letter."""
    return rx(r"^\W*" + letter + r"\b")


# --- knowledge: (question, reference, other accepted answers) --------------------------------------

KNOWLEDGE = [
    ("What is the capital of France?", "Paris", []),
    ("What is the capital of Japan?", "Tokyo", []),
    ("What is the capital of Italy?", "Rome", ["Roma"]),
    ("What is the capital of Germany?", "Berlin", []),
    ("What is the capital of Spain?", "Madrid", []),
    ("What is the capital of Canada?", "Ottawa", []),
    ("What is the capital of Australia?", "Canberra", []),
    ("What is the capital of Egypt?", "Cairo", []),
    ("What is the capital of Russia?", "Moscow", ["Moskva"]),
    ("What is the capital of China?", "Beijing", ["Peking"]),
    ("What is the capital of the United Kingdom?", "London", []),
    ("What is the capital of Greece?", "Athens", []),
    ("What is the capital of Portugal?", "Lisbon", ["Lisboa"]),
    ("What is the capital of Kenya?", "Nairobi", []),
    ("What is the capital of Argentina?", "Buenos Aires", []),
    ("What is the capital of Norway?", "Oslo", []),
    ("What is the capital of South Korea?", "Seoul", []),
    ("What is the capital of Turkey?", "Ankara", []),
    ("What is the capital of Ireland?", "Dublin", []),
    ("What is the capital of Austria?", "Vienna", ["Wien"]),
    ("What is the capital of Mexico?", "Mexico City", []),
    ("What is the capital of Poland?", "Warsaw", ["Warszawa"]),
    ("What is the capital of Thailand?", "Bangkok", []),
    ("What is the capital of Peru?", "Lima", []),
    ("Which is the largest ocean on Earth?", "The Pacific Ocean", ["Pacific"]),
    ("What is the tallest mountain on Earth above sea level?", "Mount Everest", ["Everest"]),
    ("What is the largest hot desert in the world?", "The Sahara", ["Sahara"]),
    ("Which country has the largest land area?", "Russia", []),
    ("On which continent is Egypt?", "Africa", []),
    ("In which city is the Eiffel Tower?", "Paris", []),
    ("In which country are the pyramids of Giza?", "Egypt", []),
    ("How many continents are there?", "Seven", ["7"]),
    ("Which river flows through London?", "The Thames", ["Thames"]),
    ("Which city is famous for the Statue of Liberty?", "New York", ["New York City", "NYC"]),
    ("What is the largest continent by area?", "Asia", []),
    ("In which country is the city of Rio de Janeiro?", "Brazil", ["Brasil"]),
    ("Which country has a red maple leaf on its flag?", "Canada", []),
    ("What is the chemical symbol for gold?", "Au", []),
    ("What is the chemical symbol for iron?", "Fe", []),
    ("What is the chemical symbol for sodium?", "Na", []),
    ("What is the chemical symbol for silver?", "Ag", []),
    ("What is the chemical symbol for copper?", "Cu", []),
    ("What is the chemical symbol for lead?", "Pb", []),
    ("Which element has the chemical symbol O?", "Oxygen", []),
    ("Which element has atomic number 1?", "Hydrogen", []),
    ("What is the chemical formula for water?", "H2O", ["H₂O"]),
    ("Which gas do plants take in from the air to make food?", "Carbon dioxide", ["CO2", "CO₂"]),
    ("Which gas do humans need to breathe to stay alive?", "Oxygen", ["O2"]),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100", ["one hundred"]),
    ("At what temperature in degrees Celsius does water freeze?", "0", ["zero"]),
    ("Which planet is closest to the Sun?", "Mercury", []),
    ("Which planet is known as the Red Planet?", "Mars", []),
    ("What is the largest planet in our solar system?", "Jupiter", []),
    ("Which planet is famous for its large rings?", "Saturn", []),
    ("How many planets are in our solar system?", "Eight", ["8"]),
    ("Which planet is the hottest in our solar system?", "Venus", []),
    ("What is the name of the star at the center of our solar system?", "The Sun", ["Sun", "Sol"]),
    ("Which organ pumps blood around the human body?", "The heart", ["heart"]),
    ("What is the largest organ of the human body?", "The skin", ["skin"]),
    ("How many bones are in the adult human body?", "206", []),
    ("What is the hardest natural substance?", "Diamond", ["diamonds"]),
    ("How many legs does a spider have?", "Eight", ["8"]),
    ("How many legs does an insect have?", "Six", ["6"]),
    ("What is the largest mammal on Earth?", "The blue whale", ["blue whale", "blue whales"]),
    ("What is the fastest land animal?", "The cheetah", ["cheetah", "cheetahs"]),
    ("What is the tallest animal in the world?", "The giraffe", ["giraffe", "giraffes"]),
    ("What force pulls objects toward the ground?", "Gravity", ["gravitation"]),
    ("What is the SI unit of force?", "The newton", ["newton", "newtons"]),
    ("What is the SI unit of electrical resistance?", "The ohm", ["ohm", "ohms", "Ω"]),
    ("What is the SI unit of power?", "The watt", ["watt", "watts"]),
    ("What is the SI unit of frequency?", "The hertz", ["hertz", "Hz"]),
    ("What is the SI base unit of mass?", "The kilogram", ["kilogram", "kilograms", "kg"]),
    ("What do bees make from nectar?", "Honey", []),
    ("What is a baby cat called?", "A kitten", ["kitten", "kitty"]),
    ("What is a young frog called?", "A tadpole", ["tadpole", "polliwog", "froglet"]),
    ("Which blood cells carry oxygen around the body?", "Red blood cells",
     ["red blood cell", "red cells", "erythrocytes", "erythrocyte"]),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", ["Shakespeare"]),
    ("Who wrote the novel Pride and Prejudice?", "Jane Austen", ["Austen"]),
    ("Who wrote the novel 1984?", "George Orwell", ["Orwell"]),
    ("Who wrote the novel Don Quixote?", "Miguel de Cervantes", ["Cervantes"]),
    ("Who wrote War and Peace?", "Leo Tolstoy", ["Tolstoy", "Tolstoi"]),
    ("Who wrote Oliver Twist?", "Charles Dickens", ["Dickens"]),
    ("Who wrote the novel Frankenstein?", "Mary Shelley", ["Shelley"]),
    ("Who wrote the Harry Potter books?", "J. K. Rowling", ["Rowling"]),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ["Leonardo", "da Vinci"]),
    ("Who painted The Starry Night?", "Vincent van Gogh", ["van Gogh"]),
    ("Who developed the theory of relativity?", "Albert Einstein", ["Einstein"]),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong", ["Armstrong"]),
    ("Who discovered penicillin?", "Alexander Fleming", ["Fleming"]),
    ("Who was the first President of the United States?", "George Washington", ["Washington"]),
    ("Who proposed the theory of evolution by natural selection?", "Charles Darwin", ["Darwin", "Wallace"]),
    ("Who composed the Moonlight Sonata?", "Ludwig van Beethoven", ["Beethoven"]),
    ("In what year did World War II end?", "1945", []),
    ("In what year did World War I begin?", "1914", []),
    ("In what year did humans first land on the Moon?", "1969", []),
    ("In what year did the Berlin Wall fall?", "1989", []),
    ("In what year did Columbus first reach the Americas?", "1492", []),
    ("In what year was the US Declaration of Independence signed?", "1776", []),
    ("In what year did the Titanic sink?", "1912", []),
    ("In what year did the French Revolution begin?", "1789", []),
    ("What is the plural of 'mouse'?", "Mice", []),
    ("What is the past tense of 'go'?", "Went", []),
    ("What is the opposite of 'hot'?", "Cold", []),
    ("How many days are there in a leap year?", "366", []),
    ("How many sides does a hexagon have?", "Six", ["6"]),
    ("How many degrees are in a right angle?", "90", ["ninety"]),
    ("What is the freezing point of water in degrees Fahrenheit?", "32", ["thirty-two"]),
    ("What currency is used in Japan?", "The yen", ["yen"]),
    ("What language is mainly spoken in Brazil?", "Portuguese", []),
    ("How many colors are traditionally in a rainbow?", "Seven", ["7"]),
    ("How many strings does a standard violin have?", "Four", ["4"]),
    ("What is the main ingredient of guacamole?", "Avocado", ["avocados"]),
]

# symbols are case-sensitive: 'Na' is sodium, 'na' is not an answer
SYMBOLS = {"Au", "Fe", "Na", "Ag", "Cu", "Pb"}


def knowledge_check(reference: str, aliases: list[str]) -> dict:
    return any_of(reference, *aliases, case_sensitive=reference in SYMBOLS)


# --- instruction following: (prompt, check, reference) ----------------------------------------------

INSTRUCTION = [
    ("Reply in capital letters only: what color is the sky on a clear day?", both(UPPER, any_of("blue")), "BLUE"),
    ("Using only uppercase letters, name the capital of Italy.", both(UPPER, any_of("Rome")), "ROME"),
    ("Write the word 'hello' in capital letters.", only("HELLO", ignore_case=False), "HELLO"),
    ("Answer in all caps: what animal says 'moo'?", both(UPPER, any_of("cow", "cows", "cattle")), "A COW"),
    ("Shout this in capital letters: good morning.", both(UPPER, any_of("good morning")), "GOOD MORNING!"),
    ("In uppercase only, name a day of the week.",
     both(UPPER, any_of("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")), "FRIDAY"),
    ("Using capital letters only, name the planet we live on.", both(UPPER, any_of("Earth")), "EARTH"),
    ("Write the name of the largest ocean in capital letters.", both(UPPER, any_of("Pacific")), "PACIFIC OCEAN"),
    ("Answer in lowercase letters only: what is the capital of Spain?", both(LOWER, any_of("Madrid")), "madrid"),
    ("Using no capital letters, name the long yellow fruit that monkeys eat.",
     both(LOWER, any_of("banana", "bananas")), "a banana"),
    ("Write 'GOOD NIGHT' in lowercase letters.", only("good night", ignore_case=False), "good night"),
    ("In lowercase only, what is frozen water called?", both(LOWER, any_of("ice")), "ice"),
    ("Reply in lowercase: which animal is called the king of the jungle?", both(LOWER, any_of("lion")), "the lion"),
    ("Without using any capital letters, name the season after winter.", both(LOWER, any_of("spring")), "spring"),
    ("Answer in lowercase only: what color are ripe strawberries?", both(LOWER, any_of("red")), "red"),
    ("Describe the ocean in exactly three words.", words(3, 3), "Vast, deep, blue."),
    ("Answer in exactly one word: what color is grass?", both(words(1, 1), any_of("green")), "Green"),
    ("Give exactly two words that describe winter.", words(2, 2), "Cold, snowy"),
    ("Using at most five words, say why people sleep.", words(1, 5), "To rest the body."),
    ("Write at least fifteen words about rain.", words(15),
     "Rain falls from grey clouds, soaks the ground, fills the rivers and helps the crops grow in spring."),
    ("Write a sentence about dogs in fewer than eight words.", words(1, 7), "Dogs are loyal and friendly."),
    ("Reply with a single word: the opposite of 'up'.", both(words(1, 1), any_of("down")), "Down"),
    ("Name one primary color, using one word only.",
     both(words(1, 1), any_of("red", "yellow", "blue", "green")), "Red"),
    ("In exactly four words, describe a sunny day.", words(4, 4), "Warm, bright and cheerful."),
    ("Answer in no more than three words: what do bees make?", both(words(1, 3), any_of("honey")), "Honey."),
    ("Write exactly five words about cats.", words(5, 5), "Cats are soft and curious."),
    ("Summarize the story of Cinderella in at most eight words.", words(1, 8), "A kind girl marries a prince."),
    ("Start your answer with 'Yes': is the sun a star?", starts("Yes"), "Yes, the sun is a star."),
    ("Begin your reply with the word 'Sure'. Can you name a color?", starts("Sure"), "Sure! Blue."),
    ("Start your answer with 'Dear friend'. Write a one-line greeting.", starts("Dear friend"),
     "Dear friend, I hope you are well."),
    ("Answer yes or no: is ice cold?", rx(r"^\W*yes\b", ignore_case=True), "Yes"),
    ("Answer yes or no: is fire cold?", rx(r"^\W*no\b", ignore_case=True), "No"),
    ("Answer yes or no: is the Moon bigger than the Earth?", rx(r"^\W*no\b", ignore_case=True), "No"),
    ("Answer yes or no: do birds have feathers?", rx(r"^\W*yes\b", ignore_case=True), "Yes."),
    ("Begin with 'Once upon a time' and tell a one-sentence story.", starts("Once upon a time"),
     "Once upon a time, a fox found a golden key."),
    ("Start your reply with 'Hello'. Greet a new neighbor.", starts("Hello"), "Hello, welcome to the street!"),
    ("Ask me one question about music.", both(ends("?"), words(3)), "What is your favorite song?"),
    ("Write a sentence about the sea that ends with an exclamation mark.", both(ends("!"), words(3)),
     "The sea is so big!"),
    ("Tell me about autumn and end your reply with the word 'leaves'.", rx(r"\bleaves[.!]?$", ignore_case=True),
     "In autumn the trees turn gold and drop their leaves."),
    ("End your answer with 'Thank you.' What is two plus three?", both(ends("Thank you."), any_of("5", "five")),
     "Five. Thank you."),
    ("Write a question about the weather.", both(ends("?"), words(3)), "Will it rain tomorrow?"),
    ("Finish your reply with the word 'done'. Name a vegetable.", rx(r"\bdone[.!]?$", ignore_case=True),
     "Carrot. Done."),
    ("End with three dots. Describe a quiet night.", both(ends("..."), words(3)), "The streets were still and dark..."),
    ("Name the two days of the weekend without using commas.",
     both(excluding(","), every("Saturday", "Sunday")), "Saturday and Sunday"),
    ("List three colors of the rainbow without using any commas.",
     both(excluding(","), any_of("red", "orange", "yellow", "green", "blue", "indigo", "violet")),
     "Red orange and yellow"),
    ("Answer without using any digits: how many legs does a dog have?",
     both(excluding(*DIGITS), any_of("four")), "A dog has four legs."),
    ("Describe the color of snow without using the word 'white'.", excluding("white"),
     "Snow is pale and bright like milk."),
    ("Answer without digits: how many days are in a week?", both(excluding(*DIGITS), any_of("seven")), "Seven."),
    ("Name a fruit without using the letter 'e'.",
     both(excluding("e"), any_of("banana", "kiwi", "fig", "plum", "mango", "apricot", "coconut", "durian")),
     "Banana"),
    ("Write the numbers one to five in words without commas.",
     both(excluding(","), every("one", "two", "three", "four", "five")), "one two three four five"),
    ("List three fruits, one per line.", lines(3), "apple\nbanana\ncherry"),
    ("Write the days from Monday to Wednesday, each on its own line.",
     both(lines(3), every("Monday", "Tuesday", "Wednesday")), "Monday\nTuesday\nWednesday"),
    ("Write two lines: your favorite color, then your favorite food.", lines(2), "Blue\nPizza"),
    ("Give four animals, one per line.", lines(4), "cat\ndog\nhorse\ncow"),
    ("Write a two-line poem about the moon.", lines(2), "The moon is bright tonight,\nit fills the sky with light."),
    ("Count from 1 to 5, one number per line.", rx(r"^1\s*\n\s*2\s*\n\s*3\s*\n\s*4\s*\n\s*5$"), "1\n2\n3\n4\n5"),
    ("List the primary colors red, yellow and blue, one per line.",
     both(lines(3), every("red", "yellow", "blue")), "red\nyellow\nblue"),
    ("Write three words that rhyme with 'cat', one per line.", each_line(r"[A-Za-z]*at\W*$", 3), "hat\nbat\nmat"),
    ("Repeat exactly: The cat sat on the mat.", exactly("The cat sat on the mat."), "The cat sat on the mat."),
    ("Say only the word 'banana'.", exactly("banana"), "banana"),
    ("Copy this sentence exactly: Rain falls in spring.", exactly("Rain falls in spring."), "Rain falls in spring."),
    ("Reply with just the number seven, written in digits.", only("7"), "7"),
    ("Spell the word 'cat' backwards.", only("tac"), "tac"),
    ("Spell the word 'stop' backwards.", only("pots"), "pots"),
    ("Write the first five letters of the alphabet with no spaces.", only("abcde"), "ABCDE"),
    ("Count from 1 to 5 separated by spaces.", rx(r"^1 2 3 4 5\.?$"), "1 2 3 4 5"),
    ("Reply with only the letter of the right option. Which is a mammal? A) shark B) whale C) trout",
     option("B"), "B"),
    ("Reply with only the letter. Which is a fruit? A) carrot B) potato C) apple", option("C"), "C"),
    ("Reply with only the letter. Which planet has rings? A) Saturn B) Mercury C) Mars", option("A"), "A"),
    ("Choose A, B or C and reply with the letter only. Which is a color? A) seven B) purple C) table",
     option("B"), "B"),
    ("Reply with only the letter. Which number is even? A) 3 B) 7 C) 10", option("C"), "C"),
    ("Reply with only the letter. Which animal can fly? A) eagle B) dog C) snail", option("A"), "A"),
    ("Reply with only the letter. Which is the largest? A) a mouse B) an elephant C) a cat", option("B"), "B"),
    ("Reply with only the letter. Which is a vegetable? A) lemon B) grape C) carrot", option("C"), "C) carrot"),
    ("Answer in Spanish: how do you say 'thank you'?", any_of("gracias"), "Gracias"),
    ("Translate 'cat' into French.", any_of("chat"), "chat"),
    ("Translate 'hello' into Spanish.", any_of("hola"), "Hola"),
    ("Translate 'water' into French.", any_of("eau"), "l'eau"),
    ("Translate 'dog' into German.", any_of("Hund"), "Hund"),
    ("Translate 'one, two, three' into Spanish.", every("uno", "dos", "tres"), "uno, dos, tres"),
    ("Wrap your whole answer in double quotes: what color is grass?", both(rx(r'^".*"$'), any_of("green")),
     '"Green"'),
    ("Put your answer in parentheses: what is the opposite of 'night'?", both(rx(r"^\(.*\)\.?$"), any_of("day")),
     "(day)"),
    ("Answer with a number only: how many days are in a week?", only("7"), "7"),
    ("Answer with a number only: how many wheels does a bicycle have?", only("2"), "2"),
    ("Write a sentence that uses the word 'apple' twice.", times("apple", 2), "I ate an apple and then another apple."),
    ("Use the word 'sun' three times in one sentence.", times("sun", 3),
     "The sun rose, the sun shone, and the sun set."),
    ("Say 'hip hip hooray' and nothing else.", only("hip hip hooray"), "Hip hip hooray!"),
]


# --- arithmetic: templates, each (rng) -> (prompt, answer) ---------------------------------------------

NAMES = ["Ana", "Ben", "Maya", "Omar", "Lena", "Raj", "Sofia", "Tom", "Yuki", "Ivan"]
THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards"]
UNITS = [("meters", "kilometers", 1000), ("centimeters", "meters", 100), ("minutes", "hours", 60),
         ("grams", "kilograms", 1000), ("seconds", "minutes", 60), ("hours", "days", 24),
         ("eggs", "dozen", 12), ("days", "weeks", 7)]


def plus(rng):
    a, b = rng.randint(11, 89), rng.randint(11, 89)
    return f"What is {a} + {b}?", a + b


def minus(rng):
    b = rng.randint(11, 39)
    a = b + rng.choice([n for n in range(11, 60) if n != b])  # the answer is never the prompt's last number
    return f"What is {a} - {b}?", a - b


def product(rng):
    a, b = rng.randint(3, 12), rng.randint(3, 12)
    return f"What is {a} times {b}?", a * b


def quotient(rng):
    b = rng.randint(3, 12)
    q = rng.choice([n for n in range(3, 13) if n != b])
    return f"What is {b * q} divided by {b}?", q


def percent(rng):
    p, n = rng.choice([10, 20, 25, 50, 75]), 20 * rng.randint(2, 20)
    return f"What is {p}% of {n}?", p * n // 100


def convert(rng):
    small, big, factor = rng.choice(UNITS)
    n = rng.randint(2, 9)
    return f"How many {small} are in {n} {big}?", n * factor


def gets_more(rng):
    name, thing, a, b = rng.choice(NAMES), rng.choice(THINGS), rng.randint(5, 30), rng.randint(3, 20)
    return f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b


def gives_away(rng):
    name, thing, b = rng.choice(NAMES), rng.choice(THINGS), rng.randint(3, 15)
    a = b + rng.choice([n for n in range(2, 25) if n != b])  # what is left never equals the number given
    return f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?", a - b


def total_cost(rng):
    item, price, n = rng.choice(["book", "ticket", "lamp", "mug", "scarf"]), rng.randint(2, 15), rng.randint(2, 9)
    return f"One {item} costs {price} dollars. How many dollars do {n} of them cost?", price * n


def share(rng):
    thing, kids = rng.choice(THINGS), rng.randint(2, 8)
    each = rng.choice([n for n in range(3, 12) if n != kids])  # the answer is never the prompt's last number
    return f"{kids * each} {thing} are shared equally among {kids} children. How many does each child get?", each


def squared(rng):
    a = rng.randint(3, 20)
    return f"What is {a} squared?", a * a


def half(rng):
    a = rng.randint(6, 60)
    return f"What is half of {2 * a}?", a


def reading_speed(rng):
    pages, days = rng.randint(5, 20), rng.randint(2, 7)
    return f"A reader reads {pages} pages a day. How many pages does she read in {days} days?", pages * days


def elapsed(rng):
    start, hours = rng.randint(1, 8), rng.randint(2, 4)
    return f"A train leaves at {start} o'clock and travels for {hours} hours. At what hour does it arrive?", \
        start + hours


# without it a small model explains at length and the 48-token answer is cut before the result
NUMBER_ONLY = "Answer with the number only."
ARITHMETIC = [plus, minus, product, quotient, percent, convert, gets_more, gives_away, total_cost, share,
              squared, half, reading_speed, elapsed]


# --- format: templates, each (rng) -> (prompt, check, reference) ------------------------------------------

PEOPLE = ["Ana", "Ben", "Maya", "Omar", "Lena", "Raj", "Sofia", "Tom", "Yuki", "Ivan", "Nora", "Leo"]
ITEMS = ["lamp", "chair", "kettle", "backpack", "clock", "umbrella", "blanket", "candle"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
KINDS = {"fruits": ["apple", "banana", "cherry", "grape", "pear"],
         "colors": ["red", "green", "blue", "yellow", "purple"],
         "animals": ["cat", "dog", "horse", "sheep", "goat"],
         "vegetables": ["carrot", "potato", "onion", "pea", "leek"],
         "sports": ["football", "tennis", "golf", "rugby", "hockey"],
         "musical instruments": ["piano", "violin", "drum", "flute", "guitar"]}
WORDS = ["river", "apple", "mountain", "garden", "candle", "window", "forest", "pencil", "yellow", "orange",
         "basket", "bridge", "castle", "dragon", "island", "jacket", "kitten", "lemon", "meadow", "needle"]
PHRASES = ["ada lovelace", "new york city", "good morning", "the quick fox", "grace hopper", "happy new year",
           "south america", "alan turing"]
COLUMNS = ["name", "age", "city", "email", "phone", "country", "price", "date", "score", "title"]


def json_person(rng):
    name, age = rng.choice(PEOPLE), rng.randint(18, 80)
    check = {"kind": "json_keys", "keys": ["name", "age"], "values": {"name": name, "age": age}}
    return f'Write a JSON object with keys "name" and "age" for {name}, who is {age}.', check, \
        json.dumps({"name": name, "age": age})


def json_price(rng):
    item, price = rng.choice(ITEMS), rng.randint(3, 90)
    check = {"kind": "json_keys", "keys": ["item", "price"], "values": {"item": item, "price": price}}
    return f'Give a JSON object with keys "item" and "price": a {item} costs {price} dollars.', check, \
        json.dumps({"item": item, "price": price})


def comma_range(rng):
    a = rng.randint(1, 30)
    b = a + rng.randint(3, 5)
    numbers = [str(n) for n in range(a, b + 1)]
    return f"Write the numbers from {a} to {b} as a comma-separated list.", \
        rx("^" + r",\s?".join(numbers) + r"\.?$"), ", ".join(numbers)


def iso_date(rng):
    year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    iso = f"{year}-{month:02d}-{day:02d}"
    return f"Write {MONTHS[month - 1]} {day}, {year} as a date in the form YYYY-MM-DD.", \
        rx(r"(?<!\d)" + iso + r"(?!\d)"), iso


def bullets(rng):
    kind, n = rng.choice(sorted(KINDS)), rng.randint(2, 4)
    return f"Write a markdown bullet list of {n} {kind}.", each_line(r"[-*+]\s+\S", n), \
        "\n".join(f"- {x}" for x in KINDS[kind][:n])


def numbered(rng):
    kind, n = rng.choice(sorted(KINDS)), rng.randint(2, 4)
    return f"Write a numbered list of {n} {kind}.", each_line(r"\d+[.)]\s+\S", n), \
        "\n".join(f"{i}. {x}" for i, x in enumerate(KINDS[kind][:n], 1))


def two_decimals(rng):
    value = Decimal(rng.randint(100000, 9999999)) / Decimal(100000)
    if value.as_tuple().digits[-1] == 0:  # 5 decimals shown, so the rounding is never a tie
        value += Decimal("0.00001")
    rounded = str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    return f"Write {value} rounded to two decimal places.", rx(r"(?<![\d.])" + re.escape(rounded) + r"(?!\d)"), \
        rounded


def clock_24h(rng):
    hour, minute = rng.randint(1, 11), rng.choice([0, 5, 15, 20, 30, 45, 50])
    answer = f"{hour + 12}:{minute:02d}"
    return f"Write {hour}:{minute:02d} PM in 24-hour time as HH:MM.", rx(r"(?<!\d)" + answer + r"(?!\d)"), answer


def thousands(rng):
    n = rng.randint(1_000_000, 99_999_999)
    return f"Write the number {n} with commas as thousands separators.", \
        rx(r"(?<![\d,])" + f"{n:,}" + r"(?!\d)"), f"{n:,}"


def dollars(rng):
    d, c = rng.randint(2, 99), rng.randint(1, 99)
    answer = f"${d}.{c:02d}"
    return f"Write {d} dollars and {c} cents in the form $D.CC.", rx(re.escape(answer) + r"(?!\d)"), answer


def sort_words(rng):
    chosen = rng.sample(WORDS, 3)
    while chosen == sorted(chosen):
        rng.shuffle(chosen)
    ordered = sorted(chosen)
    return f"Sort these words alphabetically, comma-separated: {', '.join(chosen)}.", \
        rx("^" + r",\s?".join(ordered) + r"\.?$", ignore_case=True), ", ".join(ordered)


def title_case(rng):
    phrase = rng.choice(PHRASES)
    return f"Write '{phrase}' with the first letter of each word capitalized.", \
        only(phrase.title(), ignore_case=False), phrase.title()


def csv_header(rng):
    columns = rng.sample(COLUMNS, 3)
    return f"Write a CSV header line for the columns {columns[0]}, {columns[1]} and {columns[2]}.", \
        rx("^" + r",\s?".join(columns) + "$"), ",".join(columns)


FORMAT = [json_person, json_price, comma_range, iso_date, bullets, numbered, two_decimals, clock_24h,
          thousands, dollars, sort_words, title_case, csv_header]


# --- assembly -------------------------------------------------------------------------------------------

def item(prefix: str, n: int, category: str, prompt: str, check: dict, reference: str) -> dict:
    return {"id": f"{prefix}-{n:03d}", "category": category, "prompt": prompt, "check": check,
            "reference": reference}


def generated(templates, rng, make) -> list[tuple]:
    """PER_TEMPLATE distinct prompts from each template."""
    out, seen = [], set()
    for template in templates:
        made = 0
        while made < PER_TEMPLATE:
            row = make(template(rng))
            if row[0] not in seen:
                seen.add(row[0])
                out.append(row)
                made += 1
    return out


def build() -> list[dict]:
    rng = random.Random(SEED)
    rows = [("inst", "instruction", *row) for row in INSTRUCTION]
    rows += [("know", "knowledge", q, knowledge_check(ref, aliases), ref) for q, ref, aliases in KNOWLEDGE]
    rows += [("arith", "arithmetic", *row) for row in generated(
        ARITHMETIC, rng, lambda qa: (f"{qa[0]} {NUMBER_ONLY}", {"kind": "numeric", "value": qa[1]}, str(qa[1])))]
    rows += [("fmt", "format", *row) for row in generated(FORMAT, rng, lambda row: row)]
    counters: dict[str, int] = {}
    items = []
    for prefix, category, prompt, check, reference in rows:
        counters[prefix] = counters.get(prefix, 0) + 1
        items.append(item(prefix, counters[prefix], category, prompt, check, reference))
    return items


def main() -> None:
    out = Path(__file__).with_name("probe.jsonl")
    items = build()
    out.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    print(f"wrote {len(items)} items to {out}")


if __name__ == "__main__":
    main()
