"""Qwen3-VL's native `computer_use` actions, one pydantic model each.

Coordinates are [x, y] in 0..1000, relative to the captured frame (Qwen3-VL's grounding space).
Everything is strict: no extra fields, no string-to-number coercion, no NaN.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

Rel = Annotated[float, Field(strict=True, ge=0, le=1000, allow_inf_nan=False)]
Coordinate = tuple[Rel, Rel]
StrictInt = Annotated[int, Field(strict=True)]
MAX_MARKS = 99  # element marks on a frame (--marks: agent/targets/marks.py), numbered 1..MAX_MARKS
MarkNo = Annotated[int, Field(strict=True, ge=1, le=MAX_MARKS)]


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Key(_Action):
    action: Literal["key"]
    keys: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(min_length=1, max_length=6)


class Type(_Action):
    action: Literal["type"]
    text: str


class MouseMove(_Action):
    action: Literal["mouse_move"]
    coordinate: Coordinate


class _Click(_Action):
    """A click at `coordinate`, at a numbered element `mark` (--marks: the loop resolves it to the
    element's centre, read from the accessibility tree at action time, before the gate), or where
    the pointer is."""

    coordinate: Coordinate | None = None
    mark: MarkNo | None = None

    @model_validator(mode="after")
    def _one_place(self):
        if self.coordinate is not None and self.mark is not None:
            raise ValueError("give a coordinate or a mark, not both")
        return self


class LeftClick(_Click):
    action: Literal["left_click"]


class RightClick(_Click):
    action: Literal["right_click"]


class MiddleClick(_Click):
    action: Literal["middle_click"]


class DoubleClick(_Click):
    action: Literal["double_click"]


class TripleClick(_Click):
    action: Literal["triple_click"]


class LeftClickDrag(_Action):
    """Press at the current pointer position (or `start_coordinate`), drag to `coordinate`."""

    action: Literal["left_click_drag"]
    coordinate: Coordinate
    start_coordinate: Coordinate | None = None


class Scroll(_Action):
    """Positive pixels scroll up (pyautogui's convention), negative down."""

    action: Literal["scroll"]
    pixels: StrictInt
    coordinate: Coordinate | None = None


class HScroll(_Action):
    """Positive pixels scroll right, negative left."""

    action: Literal["hscroll"]
    pixels: StrictInt
    coordinate: Coordinate | None = None


class Wait(_Action):
    action: Literal["wait"]
    time: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class Terminate(_Action):
    action: Literal["terminate"]
    status: Literal["success", "failure"]


class Answer(_Action):
    action: Literal["answer"]
    text: str


class AskUser(_Action):
    """A question for the person at the run (attended runs, a console, a terminal); their answer is the
    next step's feedback. Nothing reaches the desktop."""

    action: Literal["ask_user"]
    text: str = Field(min_length=1)


ACTION_MODELS = (Key, Type, MouseMove, LeftClick, RightClick, MiddleClick, DoubleClick, TripleClick,
                 LeftClickDrag, Scroll, HScroll, Wait, Terminate, Answer, AskUser)
Action = Annotated[Union[ACTION_MODELS], Field(discriminator="action")]
ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)
ACTION_NAMES: tuple[str, ...] = tuple(m.model_fields["action"].annotation.__args__[0] for m in ACTION_MODELS)
POINTER_ACTIONS = frozenset({"mouse_move", "left_click", "right_click", "middle_click", "double_click",
                             "triple_click", "left_click_drag", "scroll", "hscroll"})


def to_json(action: Action) -> dict:
    """The action as the `arguments` object of a native tool call."""
    data = action.model_dump(mode="json", exclude_none=True)
    for name in ("coordinate", "start_coordinate"):
        if name in data:  # keep 500 as 500, not 500.0, in traces and prompts
            data[name] = [int(v) if float(v).is_integer() else v for v in data[name]]
    return data
