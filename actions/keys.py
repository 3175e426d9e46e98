"""Key names pyautogui accepts, without importing pyautogui (it needs a display at import).

Copied from pyautogui 0.9.54's KEYBOARD_KEYS; tests/actions/test_policy.py checks the copy against the real
list under Xvfb. Single printable ASCII characters are valid too.
"""
import string

NAMED_KEYS = frozenset({
    'accept', 'add', 'alt', 'altleft', 'altright', 'apps', 'backspace', 'browserback',
    'browserfavorites', 'browserforward', 'browserhome', 'browserrefresh', 'browsersearch',
    'browserstop', 'capslock', 'clear', 'convert', 'ctrl', 'ctrlleft', 'ctrlright', 'decimal',
    'del', 'delete', 'divide', 'down', 'end', 'enter', 'esc', 'escape', 'execute', 'f1', 'f10',
    'f11', 'f12', 'f13', 'f14', 'f15', 'f16', 'f17', 'f18', 'f19', 'f2', 'f20', 'f21', 'f22',
    'f23', 'f24', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8', 'f9', 'final', 'fn', 'hanguel', 'hangul',
    'hanja', 'help', 'home', 'insert', 'junja', 'kana', 'kanji', 'launchapp1', 'launchapp2',
    'launchmail', 'launchmediaselect', 'left', 'modechange', 'multiply', 'nexttrack',
    'nonconvert', 'num0', 'num1', 'num2', 'num3', 'num4', 'num5', 'num6', 'num7', 'num8',
    'num9', 'numlock', 'pagedown', 'pageup', 'pause', 'pgdn', 'pgup', 'playpause', 'prevtrack',
    'print', 'printscreen', 'prntscrn', 'prtsc', 'prtscr', 'return', 'right', 'scrolllock',
    'select', 'separator', 'shift', 'shiftleft', 'shiftright', 'sleep', 'space', 'stop',
    'subtract', 'tab', 'up', 'volumedown', 'volumemute', 'volumeup', 'win', 'winleft',
    'winright', 'yen', 'command', 'option', 'optionleft', 'optionright'
})
PRINTABLE = frozenset(c for c in string.printable if c not in "\t\n\r\x0b\x0c" + string.ascii_uppercase)
VALID_KEYS = NAMED_KEYS | PRINTABLE

# Names models and people use for the same keys.
ALIASES = {
    "control": "ctrl", "cmd": "command", "super": "win", "meta": "win", "windows": "win",
    "page_up": "pageup", "page_down": "pagedown", "pgup": "pageup", "pgdn": "pagedown",
    "arrowup": "up", "arrowdown": "down", "arrowleft": "left", "arrowright": "right",
    "return": "enter", "escape": "esc", "del": "delete", "ctrlleft": "ctrl", "ctrlright": "ctrl",
    "altleft": "alt", "altright": "alt", "shiftleft": "shift", "shiftright": "shift",
    "winleft": "win", "winright": "win", "option": "alt", "optionleft": "alt", "optionright": "alt",
    "prtsc": "printscreen", "prtscr": "printscreen", "prntscrn": "printscreen", "print": "printscreen",
    "spacebar": "space", "plus": "+", "minus": "-",
}
