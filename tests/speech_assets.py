"""Synthetic speech for the recogniser tests and bench/asr.py: espeak-ng sentences resampled by sox to 16 kHz."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

SAMPLE_RATE = 16000

# Classroom-like English sentences in plain words and no numbers (a recogniser may write digits, which a word
# error rate would count as errors that are not).
ENGLISH_SENTENCES = (
    "Please open your books at the next page.",
    "The children are reading quietly in the classroom.",
    "Who can tell me the answer to the first question?",
    "We will start the science lesson after lunch.",
    "Put your pencils down and listen carefully.",
    "Today we are going to learn about volcanoes.",
    "The homework is due on Friday morning.",
    "Can everyone see the board from where they sit?",
    "Work with the person next to you for a while.",
    "That was a very good question, thank you.",
    "Raise your hand if you need more time.",
    "The library will be closed this afternoon.",
    "Write your name at the top of the page.",
    "Now we read the next paragraph together.",
    "The bell will ring in a moment.",
    "I would like you to finish the exercise at home.",
    "Water turns to ice when it gets very cold.",
    "The map shows the rivers of the country.",
    "Bring your sports shoes for the game tomorrow.",
    "Remember to check your spelling before you hand it in.",
    "The plants on the window need some water.",
    "Everybody did well on the last test.",
    "Please stop talking and look at me.",
    "We are going on a trip to the museum next week.",
    "Share the paper with your group.",
    "The story is about a girl who finds a lost dog.",
    "Count the apples and write the number down.",
    "Close the door when you come in, please.",
    "Our class will sing a song at the concert.",
    "Draw a line from each word to its picture.",
    "The teacher is explaining the new rules.",
    "It is raining, so we will stay inside today.",
    "Keep your desk clean and tidy.",
    "Who would like to read the poem aloud?",
    "The sun rises in the east every morning.",
    "Listen to the question before you answer.",
    "We have music on Tuesday and art on Thursday.",
    "Turn off the lights when we leave the room.",
    "The test will have many short questions.",
    "Thank you all for working so hard this week.",
)

# Short Korean sentences for the Vosk adapter test and the Korean CER in bench/asr.py.
KOREAN_SENTENCES = (
    "안녕하세요 오늘 날씨가 좋습니다",
    "학생들이 교실에서 책을 읽고 있습니다",
    "선생님이 질문을 했습니다",
    "우리는 내일 학교에 갑니다",
    "숙제를 금요일까지 제출하세요",
    "도서관은 오후에 문을 닫습니다",
    "물을 많이 마시는 것이 좋습니다",
    "친구와 함께 점심을 먹었습니다",
    "이 문제의 답을 아는 사람 있나요",
    "다음 주에 박물관에 갑니다",
    "창문을 열어 주세요",
    "오늘 수업은 여기까지입니다",
)

# espeak-ng voices used in turn, so the English set is not one voice only.
ENGLISH_VOICES = ("en-us", "en", "en-us+f3", "en+m3")


def espeak_missing() -> str | None:
    """A reason when espeak-ng or sox is not installed, else None."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install espeak-ng sox; scripts/install-system-deps.sh)"
    return None


def synthesise(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """Speak `text` with espeak-ng and return 16 kHz mono float32 samples in [-1, 1]."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True,
                         check=True, timeout=60).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                          "-e", "signed-integer", "-L", "-"], input=wav, capture_output=True, check=True,
                         timeout=60).stdout
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def english_set(n: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(sentence, samples) for the first `n` English sentences, voices taken in turn."""
    chosen = ENGLISH_SENTENCES[:n]
    return [(s, synthesise(s, ENGLISH_VOICES[i % len(ENGLISH_VOICES)])) for i, s in enumerate(chosen)]


def korean_set(n: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(sentence, samples) for the first `n` Korean sentences (espeak-ng -v ko)."""
    return [(s, synthesise(s, "ko", 150)) for s in KOREAN_SENTENCES[:n]]
