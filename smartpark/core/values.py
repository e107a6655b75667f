"""Domain value objects: plates, resident ID numbers, phones, money and names.

Every value here is an immutable (``attrs.frozen``) object that can be used as a
dict key and prints its canonical form with ``str()``.  User input goes through
the ``parse`` class methods, which normalise the text and raise
:class:`~smartpark.core.errors.ValidationError` with a Chinese and an English
message when the input breaks a rule.

Values that identify a person (``IdNumber``, ``Phone``) never show the full
number in ``repr()``; use ``.masked`` for logs and screens, ``str()`` only where
the full number is really needed.

Standards followed:

* ``Plate`` -- GA 36-2018 (motor vehicle number plates of the PRC), including the
  extended new-energy letters, plus the 2012-style armed-police (WJ) and
  military plates that parking cameras and plate keyboards emit.
* ``IdNumber`` -- GB 11643-1999 (citizen identification number), check
  character per ISO 7064 MOD 11-2.
* ``Phone`` -- mainland China mobile numbers (``1[3-9]`` + 9 digits).
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from typing import ClassVar

import attrs

from smartpark.core.errors import ValidationError

__all__ = [
    "PLATE_KINDS",
    "PROVINCES",
    "IdNumber",
    "Money",
    "PersonName",
    "Phone",
    "Plate",
    "id_check_char",
]


# ---------------------------------------------------------------------------
# shared text helpers
# ---------------------------------------------------------------------------

# Full-width ASCII (U+FF01..U+FF5E) to half-width, and the ideographic space.
# Done by hand instead of NFKC so that Chinese characters are never touched.
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_FULLWIDTH[0x3000] = 0x20


def _halfwidth(text: str) -> str:
    return text.translate(_FULLWIDTH)


def _require_str(value: object, field: str, zh_what: str, en_what: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(
            f"{zh_what}必须是文本",
            f"{en_what} must be given as text, got {type(value).__name__}",
            field=field,
        )
    return value


# ---------------------------------------------------------------------------
# Plate
# ---------------------------------------------------------------------------

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_PROVINCE_SET = frozenset(PROVINCES)
_PLATE_COLOURS = "蓝黄绿白黑"
# Serial characters: digits and letters without I and O (GA 36-2018 5.x).
_SERIAL = frozenset("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Issuing-authority letter: any letter except I.  O is kept because Annex A
# lists it (鲁O, provincial organs) and plate keyboards offer it.
_AUTHORITY = _LETTERS - {"I"}
# New-energy letters: D/F originally, extended to A-K without I (纯电动
# D,A,B,C,E; 非纯电动 F,G,H,J,K).  Used for small (first serial char) and
# large (last serial char) new-energy plates alike.
_ENERGY = frozenset("ABCDEFGHJK")
# Chinese characters that may close a 7-character plate.
_SUFFIX_KIND = {
    "挂": "trailer",
    "学": "coach",
    "警": "police",
    "港": "hongkong",
    "澳": "macau",
    "领": "consulate",
}
# Last character of a 2012-style armed police plate: digit or service letter
# (X 消防, B 边防, T 交通, S 森林, H 黄金, J 警卫, D 水电).
_WJ_LAST = _DIGITS | frozenset("XBTSHJD")
# First letter of a 2012-style military plate (W is taken by WJ plates).
_MILITARY_FIRST = _LETTERS - {"I", "O", "W"}
_SPECIAL_CJK = frozenset("挂学警港澳领使")
_ALLOWED_CHARS = _PROVINCE_SET | _LETTERS | _DIGITS | _SPECIAL_CJK
# Separators dropped by Plate.parse: whitespace is handled separately.
_PLATE_SEPARATORS = dict.fromkeys(map(ord, "·•・･‧∙⋅.-‐‑‒–—−"), None)

PLATE_KINDS = (
    "regular",
    "new_energy_small",
    "new_energy_large",
    "trailer",
    "coach",
    "police",
    "hongkong",
    "macau",
    "embassy",
    "consulate",
    "armed_police",
    "military",
)
# Kinds whose text starts with province + issuing-authority letter.
_PROVINCE_LETTER_KINDS = frozenset(
    {
        "regular",
        "new_energy_small",
        "new_energy_large",
        "trailer",
        "coach",
        "police",
        "hongkong",
        "macau",
    }
)

_PLATE_FORMAT_HINT_ZH = "普通车牌如“京A12345”，新能源车牌如“京AD12345”"
_PLATE_FORMAT_HINT_EN = "expected e.g. 京A12345 (ordinary) or 京AD12345 (new energy)"


def _plate_error(zh: str, en: str) -> ValidationError:
    return ValidationError(zh, en, field="plate")


def _check_serial(serial: str) -> None:
    """Refuse I/O (the standard never uses them) and anything not A-Z/0-9."""
    for ch in serial:
        if ch in ("I", "O"):
            digit = "1" if ch == "I" else "0"
            raise _plate_error(
                f"车牌号码中不使用字母{ch}，请确认是否为数字{digit}",
                f"plate serials never use the letter {ch}; did you mean the digit {digit}?",
            )
        if ch in _SPECIAL_CJK or ch in _PROVINCE_SET:
            raise _plate_error(
                f"汉字“{ch}”不能出现在车牌号码中间",
                f"the Chinese character '{ch}' cannot appear in the middle of a plate",
            )
        if ch not in _SERIAL:
            raise _plate_error(
                f"车牌号码含有无效字符“{ch}”",
                f"plate contains an invalid character '{ch}'",
            )


def _wrong_length(n: int, zh_expect: str, en_expect: str) -> ValidationError:
    return _plate_error(
        f"车牌号位数不对（{n}位），{zh_expect}",
        f"plate has the wrong length ({n} characters); {en_expect}",
    )


def _classify_plate(s: str) -> str:
    """Return the kind of the canonical plate text ``s`` or raise."""
    if not s:
        raise _plate_error("请输入车牌号", "plate is empty")
    n = len(s)
    first = s[0]

    # Colour word sent by some cameras in front of the plate ("蓝苏A8HK52").
    # 黑 is also Heilongjiang, so only call it a colour when a province follows.
    if first in _PLATE_COLOURS and (first != "黑" or (n > 1 and s[1] in _PROVINCE_SET)):
        raise _plate_error(
            f"车牌号前面多了颜色字“{first}”，请只输入车牌号，如“苏A8HK52”",
            f"the plate starts with the colour word '{first}'; "
            "enter the plate number only, e.g. 苏A8HK52",
        )

    if first not in _ALLOWED_CHARS and unicodedata.category(first) == "Lo":
        raise _plate_error(
            f"车牌号应以省份简称开头（如“京”“粤”），“{first}”不是省份简称",
            f"a plate must start with a province abbreviation such as 京 or 粤, not '{first}'",
        )
    for ch in s:
        if ch not in _ALLOWED_CHARS:
            raise _plate_error(
                f"车牌号含有无效字符“{ch}”，{_PLATE_FORMAT_HINT_ZH}",
                f"plate contains an invalid character '{ch}'; {_PLATE_FORMAT_HINT_EN}",
            )

    # --- armed police, 2012 style: WJ + province + 4 serial + digit/letter --
    if s.startswith("WJ"):
        if n != 8:
            raise _wrong_length(n, "武警车牌应为8位，如“WJ粤12345”", "armed police plates have 8 characters, e.g. WJ粤12345")
        if s[2] not in _PROVINCE_SET:
            raise _plate_error(
                "武警车牌“WJ”后应为省份简称，如“WJ粤12345”",
                "an armed police plate needs a province after 'WJ', e.g. WJ粤12345",
            )
        _check_serial(s[3:7])
        if s[7] not in _WJ_LAST:
            raise _plate_error(
                "武警车牌最后一位应为数字或 X/B/T/S/H/J/D",
                "the last character of an armed police plate must be a digit or one of X B T S H J D",
            )
        return "armed_police"

    # --- embassy: 使 + 3-digit mission code + 3 serial, or the 2017 style
    # with 使 last -------------------------------------------------------------
    if first == "使" or s[-1] == "使":
        if n != 7:
            raise _wrong_length(n, "使馆车牌应为7位，如“使014578”", "embassy plates have 7 characters, e.g. 使014578")
        body = s[1:] if first == "使" else s[:-1]
        if not all(ch in _DIGITS for ch in body[:3]):
            raise _plate_error(
                "使馆车牌“使”字后应为3位数字的使馆编号，如“使014578”",
                "an embassy plate needs a 3-digit mission code next to 使, e.g. 使014578",
            )
        _check_serial(body[3:])
        return "embassy"

    # --- military, 2012 style: two letters + five digits -------------------
    if first in _LETTERS:
        if (
            n == 7
            and first in _MILITARY_FIRST
            and s[1] in _AUTHORITY
            and all(ch in _DIGITS for ch in s[2:])
        ):
            return "military"
        raise _plate_error(
            f"车牌号应以省份简称开头（如“京”“粤”），“{first}”不是省份简称",
            f"a plate must start with a province abbreviation such as 京 or 粤, not '{first}'",
        )

    if first not in _PROVINCE_SET:
        raise _plate_error(
            f"车牌号应以省份简称开头（如“京”“粤”），“{first}”不是省份简称",
            f"a plate must start with a province abbreviation such as 京 or 粤, not '{first}'",
        )
    if n < 2:
        raise _wrong_length(n, _PLATE_FORMAT_HINT_ZH, _PLATE_FORMAT_HINT_EN)
    second = s[1]

    # --- consulate, 2018 style: province + 3-digit code + 2 serial + 领 -----
    if second in _DIGITS and s[-1] == "领":
        if n != 7:
            raise _wrong_length(n, "领馆车牌应为7位，如“沪22478领”", "consulate plates have 7 characters, e.g. 沪22478领")
        if not all(ch in _DIGITS for ch in s[1:4]):
            raise _plate_error(
                "领馆车牌省份简称后应为3位数字的领馆编号，如“沪22478领”",
                "a consulate plate needs a 3-digit mission code after the province, e.g. 沪22478领",
            )
        _check_serial(s[4:6])
        return "consulate"

    if second in _PROVINCE_SET:
        raise _plate_error(
            "车牌号只能有一个省份简称，第二位应为发牌机关字母（A–Z）",
            "a plate has only one province abbreviation; the second character must be "
            "the issuing-authority letter (A-Z)",
        )
    if second not in _LETTERS:
        raise _plate_error(
            f"车牌号第二位应为发牌机关字母（A–Z），不能是“{second}”",
            f"the second character must be the issuing-authority letter (A-Z), not '{second}'",
        )
    if second == "I":
        raise _plate_error(
            "发牌机关代号不使用字母I，请确认是否为数字1",
            "the issuing-authority letter is never I",
        )

    last = s[-1]
    # --- province + letter + 4 serial + 挂/学/警/港/澳/领 ---------------------
    if last in _SUFFIX_KIND:
        kind = _SUFFIX_KIND[last]
        if n != 7:
            raise _wrong_length(
                n,
                f"带“{last}”字的车牌应为7位，如“{s[:2]}1234{last}”",
                f"plates ending in {last} have 7 characters, e.g. {s[:2]}1234{last}",
            )
        if kind in ("hongkong", "macau") and s[:2] != "粤Z":
            raise _plate_error(
                f"港澳入出境车牌应以“粤Z”开头，如“粤Z1234{last}”",
                f"Hong Kong / Macau crossing plates start with 粤Z, e.g. 粤Z1234{last}",
            )
        _check_serial(s[2:6])
        return kind

    serial = s[2:]
    _check_serial(serial)
    if n == 7:
        return "regular"
    if n == 8:
        # Small new-energy: energy letter, letter-or-digit, four digits.
        if serial[0] in _LETTERS:
            if serial[0] not in _ENERGY:
                raise _plate_error(
                    "新能源小型车牌第三位应为能源字母（D、F 或 A–K，不含I）",
                    "on a small new-energy plate the third character must be the energy "
                    "letter (D, F, or A-K without I)",
                )
            if not all(ch in _DIGITS for ch in serial[2:]):
                raise _plate_error(
                    "新能源小型车牌最后4位应为数字，如“京AD12345”“京ADA1234”",
                    "the last four characters of a small new-energy plate must be digits, "
                    "e.g. 京AD12345 or 京ADA1234",
                )
            return "new_energy_small"
        # Large new-energy: five digits then the energy letter.
        if serial[-1] in _LETTERS:
            if serial[-1] not in _ENERGY:
                raise _plate_error(
                    "新能源大型车牌最后一位应为能源字母（D、F 或 A–K，不含I）",
                    "on a large new-energy plate the last character must be the energy "
                    "letter (D, F, or A-K without I)",
                )
            if not all(ch in _DIGITS for ch in serial[:5]):
                raise _plate_error(
                    "新能源大型车牌能源字母前应为5位数字，如“京A12345D”",
                    "a large new-energy plate has five digits before the energy letter, e.g. 京A12345D",
                )
            return "new_energy_large"
        raise _plate_error(
            "8位车牌是新能源车牌，第三位或最后一位应为能源字母（如D、F），如“京AD12345”“京A12345D”",
            "an 8-character plate is a new-energy plate and needs an energy letter (e.g. D or F) "
            "in third or last position, e.g. 京AD12345 or 京A12345D",
        )
    raise _wrong_length(n, "普通车牌应为7位，新能源车牌应为8位", "ordinary plates have 7 characters, new-energy plates 8")


def _normalise_plate(text: str) -> str:
    s = _halfwidth(text)
    s = "".join(ch for ch in s if not ch.isspace())
    s = s.translate(_PLATE_SEPARATORS)
    return s.upper()


def _validate_plate_value(instance: object, attribute: attrs.Attribute, value: object) -> None:
    value = _require_str(value, "plate", "车牌号", "plate")
    if value != _normalise_plate(value):
        raise _plate_error(
            "车牌号不是规范格式，请使用 Plate.parse 输入",
            "plate text is not canonical; build it with Plate.parse",
        )


@attrs.frozen
class Plate:
    """A vehicle number plate (GA 36-2018) in canonical form, e.g. ``京A12345``.

    Build it from user or camera input with :meth:`parse`.  ``kind`` is one of
    :data:`PLATE_KINDS`.  The constructor accepts only the canonical text (no
    spaces, dots or lower case) and validates it the same way.
    """

    value: str = attrs.field(validator=_validate_plate_value)
    kind: str = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "kind", _classify_plate(self.value))

    @classmethod
    def parse(cls, text: str) -> Plate:
        """Normalise ``text`` (spaces, dots, dashes, full width, case) and validate it."""
        text = _require_str(text, "plate", "车牌号", "plate")
        return cls(_normalise_plate(text))

    def __str__(self) -> str:
        return self.value

    @property
    def province(self) -> str | None:
        """Province abbreviation, or ``None`` for embassy and military plates."""
        if self.kind == "armed_police":
            return self.value[2]
        if self.kind in ("embassy", "military"):
            return None
        return self.value[0]

    @property
    def display(self) -> str:
        """Text as printed on the plate: ``京A·12345`` (dot after the authority letter)."""
        if self.kind in _PROVINCE_LETTER_KINDS or self.kind == "military":
            return f"{self.value[:2]}·{self.value[2:]}"
        if self.kind == "consulate" and self.value[1] in _LETTERS:
            return f"{self.value[:2]}·{self.value[2:]}"
        return self.value

    @property
    def masked(self) -> str:
        """Keep the prefix (province + letter) and the last two characters: ``京A***45``."""
        keep = 3 if self.kind == "armed_police" else 2
        v = self.value
        return v[:keep] + "*" * (len(v) - keep - 2) + v[-2:]

    @property
    def is_new_energy(self) -> bool:
        """True for small and large new-energy (green) plates."""
        return self.kind in ("new_energy_small", "new_energy_large")


# ---------------------------------------------------------------------------
# IdNumber
# ---------------------------------------------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# Province-level codes (first two digits).  Not a county list: the address
# code is the county of first registration, which may since have been renamed
# or abolished, so only the province level is checked.  81/82/83 are used by
# residence permits of Hong Kong, Macau and Taiwan residents.
_ID_PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 "
    "50 51 52 53 54 61 62 63 64 65 71 81 82 83".split()
)
_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")


def id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character for the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _id_error(zh: str, en: str) -> ValidationError:
    return ValidationError(zh, en, field="id_number")


def _id_birth_date(value: str) -> _dt.date:
    y, m, d = int(value[6:10]), int(value[10:12]), int(value[12:14])
    if y < 1900:
        raise _id_error(
            f"身份证号中的出生年份{y}不正确（应不早于1900年）",
            f"the birth year {y} in the ID number is wrong (must be 1900 or later)",
        )
    try:
        return _dt.date(y, m, d)
    except ValueError:
        raise _id_error(
            f"身份证号第7–14位出生日期{value[6:14]}不是有效日期",
            f"the birth date {value[6:14]} (digits 7-14) is not a real calendar date",
        ) from None


def _validate_id_value(instance: object, attribute: attrs.Attribute, value: object) -> None:
    value = _require_str(value, "id_number", "身份证号", "ID number")
    if re.fullmatch(r"[0-9]{15}", value):
        raise _id_error(
            "请输入18位身份证号（15位旧号码已停用）",
            "15-digit legacy ID numbers are not accepted; enter the 18-digit number",
        )
    if len(value) != 18:
        raise _id_error(
            f"身份证号应为18位，当前为{len(value)}位",
            f"an ID number has 18 characters, got {len(value)}",
        )
    if not _ID_SHAPE.fullmatch(value):
        raise _id_error(
            "身份证号前17位应为数字，最后一位为数字或X",
            "the first 17 characters of an ID number must be digits and the last a digit or X",
        )
    if value[:2] not in _ID_PROVINCES:
        raise _id_error(
            f"身份证号前两位省份代码“{value[:2]}”不存在",
            f"the province code '{value[:2]}' (first two digits) does not exist",
        )
    _id_birth_date(value)
    if id_check_char(value[:17]) != value[17]:
        raise _id_error(
            "身份证号校验位错误，请核对最后一位",
            "ID number check character is wrong; please check the last character",
        )


@attrs.frozen
class IdNumber:
    """An 18-character resident identity number (GB 11643-1999).

    ``repr()`` shows only the masked form.  :meth:`parse` also refuses birth
    dates in the future; the constructor checks everything else and is meant
    for values read back from storage.
    """

    value: str = attrs.field(validator=_validate_id_value)

    @classmethod
    def parse(cls, text: str, *, today: _dt.date | None = None) -> IdNumber:
        """Strip spaces, accept a lower-case ``x`` and validate ``text``."""
        text = _require_str(text, "id_number", "身份证号", "ID number")
        s = "".join(ch for ch in _halfwidth(text) if not ch.isspace()).upper()
        if not s:
            raise _id_error("请输入身份证号", "ID number is empty")
        result = cls(s)
        today = today or _dt.date.today()
        if result.birth_date > today:
            raise _id_error(
                f"身份证号中的出生日期{s[6:14]}晚于今天",
                f"the birth date {s[6:14]} in the ID number is in the future",
            )
        return result

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"IdNumber({self.masked!r})"

    @property
    def masked(self) -> str:
        """First 6 and last 4 characters with 8 asterisks: ``110105********1234``."""
        return self.value[:6] + "*" * 8 + self.value[-4:]

    @property
    def area_code(self) -> str:
        """The 6-digit address code (county of first registration)."""
        return self.value[:6]

    @property
    def birth_date(self) -> _dt.date:
        return _id_birth_date(self.value)

    @property
    def gender(self) -> str:
        """``"male"`` if the 17th digit is odd, else ``"female"``."""
        return "male" if int(self.value[16]) % 2 else "female"


# ---------------------------------------------------------------------------
# Phone
# ---------------------------------------------------------------------------

# Mainland mobile numbers: 1[3-9] + 9 digits.  This accepts 14x, 16x, 17x and
# 19x segments (e.g. 148, 149, 162, 174 in the vectors, which some validators
# dispute) and refuses validator.js's 92x/98x "reserve" segments, which no
# other source accepts and which are not in service.
_MOBILE = re.compile(r"1[3-9][0-9]{9}")
# Optional country prefix: "+86" / "0086", or either (or a bare "86") in
# parentheses.  A bare "86" without parentheses is handled in parse() so that
# it is only taken as a prefix when 11 digits follow.
_PHONE_SHAPE = re.compile(r"(?:\((?P<p1>\+86|0086|86)\)|(?P<p2>\+86|0086))?(?P<num>[0-9]+)")
_PHONE_SEPARATORS = dict.fromkeys(map(ord, "-‐‑‒–—−."), None)


def _phone_error(zh: str, en: str) -> ValidationError:
    return ValidationError(zh, en, field="phone")


def _validate_phone_value(instance: object, attribute: attrs.Attribute, value: object) -> None:
    value = _require_str(value, "phone", "手机号", "phone number")
    if not _MOBILE.fullmatch(value):
        raise _phone_error(
            "手机号应为以13–19开头的11位数字",
            "a mobile number has 11 digits starting with 13-19",
        )


@attrs.frozen
class Phone:
    """A mainland China mobile number, stored as 11 digits.

    ``repr()`` shows only the masked form ``138****5678``.
    """

    value: str = attrs.field(validator=_validate_phone_value)

    @classmethod
    def parse(cls, text: str) -> Phone:
        """Accept spaces, dashes and a ``+86``/``0086``/``86`` prefix (optionally in parentheses)."""
        text = _require_str(text, "phone", "手机号", "phone number")
        s = "".join(ch for ch in _halfwidth(text) if not ch.isspace()).translate(_PHONE_SEPARATORS)
        if not s:
            raise _phone_error("请输入手机号", "phone number is empty")
        m = _PHONE_SHAPE.fullmatch(s)
        if m is None:
            raise _phone_error(
                "手机号只能包含数字，可带+86前缀，如“13812345678”",
                "a phone number may contain only digits and an optional +86 prefix, e.g. 13812345678",
            )
        num = m.group("num")
        if m.group("p1") is None and m.group("p2") is None and len(num) == 13 and num.startswith("86"):
            num = num[2:]
        if len(num) != 11:
            raise _phone_error(
                f"手机号应为11位数字，当前为{len(num)}位",
                f"a mobile number has 11 digits, got {len(num)}",
            )
        if not _MOBILE.fullmatch(num):
            raise _phone_error(
                "手机号号段不正确，应以13–19开头",
                "this is not a mainland mobile number; it must start with 13-19",
            )
        return cls(num)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Phone({self.masked!r})"

    @property
    def masked(self) -> str:
        """First 3 and last 4 digits: ``138****5678``."""
        return self.value[:3] + "****" + self.value[-4:]


# ---------------------------------------------------------------------------
# Money
# ---------------------------------------------------------------------------

_YUAN = re.compile(r"(?P<sign>[+-]?)(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?")


def _validate_fen(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            "金额必须是以“分”为单位的整数",
            f"an amount must be an integer number of fen, got {type(value).__name__}",
            field="amount",
        )


@attrs.frozen(order=True)
class Money:
    """An amount of Chinese yuan held as an integer number of fen (分).

    Negative amounts are allowed (arrears, refunds); see :attr:`is_negative`.
    Arithmetic: ``Money + Money``, ``Money - Money``, ``Money * int``.
    """

    fen: int = attrs.field(validator=_validate_fen)

    @classmethod
    def zero(cls) -> Money:
        return cls(0)

    @classmethod
    def from_yuan(cls, text: str) -> Money:
        """Parse a decimal yuan string such as ``"12.50"`` exactly (at most 2 decimals)."""
        if not isinstance(text, str):
            raise ValidationError(
                "金额必须以文本形式给出，如“12.50”",
                f"a yuan amount must be given as text such as '12.50', got {type(text).__name__}",
                field="amount",
            )
        s = text.strip()
        if not s:
            raise ValidationError("请输入金额", "amount is empty", field="amount")
        m = _YUAN.fullmatch(s)
        if m is None:
            raise ValidationError(
                f"金额“{s}”格式不正确，应为如“12.50”的数字",
                f"the amount '{s}' is not a plain decimal number such as 12.50",
                field="amount",
            )
        frac = m.group("frac") or ""
        if len(frac) > 2:
            raise ValidationError(
                "金额最多保留两位小数（精确到分）",
                "an amount may have at most two decimal places (fen)",
                field="amount",
            )
        fen = int(m.group("int")) * 100 + int(frac.ljust(2, "0"))
        return cls(-fen if m.group("sign") == "-" else fen)

    @property
    def yuan_str(self) -> str:
        """Yuan with exactly two decimals, e.g. ``"12.50"`` or ``"-0.05"``."""
        sign = "-" if self.fen < 0 else ""
        whole, part = divmod(abs(self.fen), 100)
        return f"{sign}{whole}.{part:02d}"

    @property
    def is_negative(self) -> bool:
        return self.fen < 0

    @property
    def is_zero(self) -> bool:
        return self.fen == 0

    def __str__(self) -> str:
        if self.fen < 0:
            return f"-¥{self.yuan_str[1:]}"
        return f"¥{self.yuan_str}"

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(self.fen + other.fen)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(self.fen - other.fen)

    def __mul__(self, other: object) -> Money:
        if isinstance(other, bool) or not isinstance(other, int):
            return NotImplemented
        return Money(self.fen * other)

    __rmul__ = __mul__

    def __neg__(self) -> Money:
        return Money(-self.fen)


# ---------------------------------------------------------------------------
# PersonName
# ---------------------------------------------------------------------------

_NAME_DOTS = dict.fromkeys(map(ord, "•・･‧∙⋅"), "·")
_NAME_MAX = 40


def _name_error(zh: str, en: str) -> ValidationError:
    return ValidationError(zh, en, field="name")


def _validate_name_value(instance: object, attribute: attrs.Attribute, value: object) -> None:
    value = _require_str(value, "name", "姓名", "name")
    if not value:
        raise _name_error("请输入姓名", "name is empty")
    if len(value) > _NAME_MAX:
        raise _name_error(
            f"姓名过长（{len(value)}个字符），最多{_NAME_MAX}个字符",
            f"name is too long ({len(value)} characters); at most {_NAME_MAX} are allowed",
        )
    if value != value.strip():
        raise _name_error("姓名首尾不能有空格", "name must not start or end with spaces")
    has_letter = False
    for ch in value:
        cat = unicodedata.category(ch)
        if cat[0] == "C" or cat in ("Zl", "Zp"):
            raise _name_error(
                "姓名包含控制字符或不可见字符",
                f"name contains a control or invisible character (U+{ord(ch):04X})",
            )
        if cat[0] == "S" or (cat[0] == "Z" and ch != " "):
            raise _name_error(
                f"姓名包含不允许的字符“{ch}”",
                f"name contains a character that is not allowed: '{ch}'",
            )
        if cat[0] == "L":
            has_letter = True
    if not has_letter:
        raise _name_error(
            "姓名应包含文字，不能只有数字或符号",
            "name must contain letters, not only digits or punctuation",
        )


@attrs.frozen
class PersonName:
    """A person's name: Chinese (incl. ``·`` in minority names) or Latin with spaces.

    1-40 characters after trimming; runs of spaces are collapsed and dot
    variants are unified to ``·`` by :meth:`parse`.
    """

    value: str = attrs.field(validator=_validate_name_value)

    MAX_LENGTH: ClassVar[int] = _NAME_MAX

    @classmethod
    def parse(cls, text: str) -> PersonName:
        """Trim, convert full-width ASCII, collapse spaces and validate ``text``."""
        text = _require_str(text, "name", "姓名", "name")
        s = _halfwidth(text).translate(_NAME_DOTS)
        # Any kind of space (NBSP, ideographic space...) becomes one plain space.
        s = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in s)
        s = re.sub(" +", " ", s).strip(" ")
        return cls(s)

    def __str__(self) -> str:
        return self.value
