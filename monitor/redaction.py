"""PII redaction before text reaches a reviewer: Microsoft Presidio plus fintech recognizers.

:class:`Redactor` replaces each personal value with a typed placeholder (``[EMAIL]``, ``[CARD]``,
``[IBAN]``, ...; :data:`PLACEHOLDERS`). It runs offline: Presidio's analyzer gets a blank spaCy
pipeline (tokens only, no model download), so its *pattern* recognizers do the work (cards with
Luhn, IBANs with their checksum, e-mail, phone numbers through ``phonenumbers`` for the UK, US and
EU regions, IP addresses, US SSN, UK national insurance numbers, UK postcodes, Spanish NIF,
Italian fiscal codes), and the recognizers of this module add what a fintech help desk needs and
Presidio lacks: UK sort codes and account numbers (by their context words), street addresses (a
street word of the UK, US, German, French, Spanish, Italian or Dutch kind next to a house number),
and people's names where the text introduces them ("my name is ...", "this is ...", a sign-off,
a salutation, a title). No named-entity model installs offline from the registry, so a name
mentioned without such a cue is *not* caught (docs/redaction.md has the measured recall and
precision per type on the shipped corpus).

>>> Redactor().redact("Card 4111 1111 1111 1111, mail jo@example.com, sort code 20-00-00.")
'Card [CARD], mail [EMAIL], sort code [SORT_CODE].'
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: Presidio entity -> placeholder. Entities not listed are not redacted (dates, URLs, ...).
PLACEHOLDERS = {
    "PERSON": "[NAME]", "EMAIL_ADDRESS": "[EMAIL]", "PHONE_NUMBER": "[PHONE]", "CREDIT_CARD": "[CARD]",
    "IBAN_CODE": "[IBAN]", "IP_ADDRESS": "[IP]", "US_SSN": "[SSN]", "UK_NINO": "[NINO]",
    "ES_NIF": "[NATIONAL_ID]", "IT_FISCAL_CODE": "[NATIONAL_ID]", "US_ITIN": "[NATIONAL_ID]",
    "SORT_CODE": "[SORT_CODE]", "ACCOUNT_NUMBER": "[ACCOUNT]", "STREET_ADDRESS": "[ADDRESS]",
    "UK_POSTCODE": "[ADDRESS]",
}
PHONE_REGIONS = ("GB", "US", "DE", "FR", "ES", "IT", "NL", "IE", "BE", "AT")
#: Below this score a finding is not redacted (Presidio's phone finds score 0.4, context lifts them).
MIN_SCORE = 0.35
MAX_TEXT = 100_000  # characters per call; longer text is redacted in pieces

#: Capitalised words that start sentences, never names (so "Thanks, Ann Lee The app ..." stops at Lee).
_NOT_NAMES = (r"(?!(?:The|This|That|These|Those|My|Your|His|Her|Our|Their|It|Its|I|We|You|He|She|They|Please|Can|"
              r"Could|Would|Will|Is|Are|Was|Were|Do|Does|Did|Have|Has|Hi|Hello|Thanks|Thank|Dear|Yes|No|And|But|"
              r"Or|So|If|When|What|Why|How|Where|Who)\b)")
_NAME_WORD = _NOT_NAMES + r"[A-ZÀ-ÖØ-Þ][a-zà-öø-ÿ'’]+(?:-[A-ZÀ-ÖØ-Þa-zà-öø-ÿ][a-zà-öø-ÿ'’]+)*"
_PARTICLE = r"(?:van|von|de|del|della|di|da|der|den|ten|ter|le|la|du|dos|das|y|e)"
_TITLE = (r"(?:(?:Univ\.Prof|Univ\.-Prof|Dr|Dipl\.-Ing|Dipl\.-Kfm|Dott|Dott\.ssa|Prof|Ing|Frau|Herr|Mr|Mrs|Ms|"
          r"Mme|Mlle|Sig|Sig\.ra|Sra?|Don|Doña)\.?\s+)")
_SUFFIX = r"(?:,?\s+(?:MBA|B\.?Sc|B\.?A|M\.?Sc|M\.?A|B\.?Eng|M\.?Eng|PhD|Jr|Sr|MD|DDS|DVM|II|III|IV)\.?)"
_NAME = rf"{_TITLE}*{_NAME_WORD}(?:\s+(?:{_PARTICLE}\s+)*{_NAME_WORD}){{0,3}}{_SUFFIX}*"
_NAME_CUES = (
    r"\b(?:[Mm]y name is|[Tt]his is|[Ii] am|[Ii]'m|[Hh]older is|[Aa]ddressed to|letter to|[Nn]ame:)\s+",
    r"\b(?:[Dd]ear|[Hh]i|[Hh]ello|Mr\.?|Mrs\.?|Ms\.?|Miss|Dr\.?|Herr|Frau|Mme|Monsieur|Madame|Sig\.?|Sra?\.?)\s+",
    r"(?:[Tt]hanks|[Tt]hank you|[Rr]egards|[Kk]ind regards|[Bb]est|[Cc]heers|[Ss]incerely),?\s*\n?\s*",
)
_STREET_WORDS = (
    # English
    r"Street|St\.?|Road|Rd\.?|Avenue|Ave\.?|Lane|Ln\.?|Drive|Dr\.?|Highway|Hwy|Boulevard|Blvd\.?|Way|Court|Ct\.?|"
    r"Place|Pl\.?|Square|Sq\.?|Terrace|Crescent|Close|Grove|Gardens|Park|Parkway|Plains?|Hill|Mews|Row|Walk|"
    r"Circle|Trail|Pike|Loop|Ridge|Harbor|Harbour|Port|Ports|Fields?|Green|Rise|Vale|View|Views|Wells?|"
    r"Mills?|Meadows?|Cove|Creek|Crossing|Junction|Knolls?|Landing|Manor|Orchard|Pass|Point|Springs?|"
    r"Stravenue|Summit|Track|Turnpike|Underpass|Union|Valley|Villages?|Ville|Vista|Extension|Expressway|"
    r"Estates?|Falls|Ferry|Flats|Ford|Forge|Forks?|Fort|Freeway|Glen|Haven|Heights|Hollow|Inlet|Island|"
    r"Isle|Keys?|Lake|Lakes|Light|Lock|Lodge|Motorway|Mount|Mountain|Neck|Oval|Overpass|Pines|Plaza|"
    r"Prairie|Radial|Ranch|Rapids|Rest|Route|River|Shoal|Shore|Shores|Skyway|Squares|Station|Stream|"
    r"Streets|Throughway|Trace|Trafficway|Tunnel|Via|Viaduct|Bypass|Causeway|Centre|Center|Common|"
    r"Corner|Corners|Course|Courts|Coves|Curve|Dale|Dam|Divide|Drives|Garden|Gateway|Bridge|Brook|"
    r"Burg|Bluff|Beach|Bend|Camp|Canyon|Cape|Cliff|Club|Cliffs|Alley|Arcade|Branch|Grounds|Groves"
)
_CONTINENTAL = (
    # German, Dutch compounds end in the street word; French, Spanish, Italian put it first.
    r"[\w.'’-]*(?i:straße|strasse|str\.|weg|platz|allee|gasse|ring|damm|ufer|chaussee|"
    r"straat|laan|plein|gracht|pad|hof|singel|dreef|kade|steeg|dijk|markt|park|baan|wal|boulevard)"
)
_LEADING_STREET = (
    r"(?i:rue|avenue|boulevard|bd|chemin|impasse|allée|place|quai|route|cours|passage|square|voie|"
    r"Calle|C/|C\.|Avenida|Avda\.?|Paseo|Pasaje|Pasadizo|Plaza|Camino|Ronda|Vía|Via|Viale|Vicolo|Piazza|"
    r"Piazzale|Corso|Largo|Strada|Contrada|Borgo|Canale|Rotonda|Incrocio|Stretto|Cañada|Glorieta|"
    r"Callejón|Urbanización|Acceso|Alameda|Carrer|Cuesta|Rambla|Travesía|Senda|Sector|Partida|Vial)"
)
_HOUSE = r"\d{1,5}[A-Za-z]?(?:[/-]\d{1,4})?"
_UNIT = r"(?:Apt\.?|Apartment|Appartamento|Suite|Flat|Piso|Puerta|Piano|Scala|Interno|Unit|Etage|bis)"
_POSTCODE = r"(?:\d{4,5}\s*[A-Z]{0,2}|[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2})"
_TAIL = rf"(?:,?\s*{_UNIT}\s*\w+)*(?:\s*,?\s*{_POSTCODE}\s+[A-ZÀ-Þ][\w'’ -]*?(?=[.,\n]|$))?"
_ADDRESSES = (
    # "221B Baker Street", "8353 Kathleen Highway Apt. 681", "Flat 0 Francesca Plains"
    rf"(?:(?:Flat|Apartment|Studio|Unit)\s+\w+,?\s+)?{_HOUSE},?\s+(?:[A-Z][\w'’-]*\s+){{1,3}}(?:{_STREET_WORDS})s?\b{_TAIL}",
    rf"(?:Flat|Apartment|Studio|Unit)\s+\w+,?\s+(?:[A-Z][\w'’-]*\s+){{1,3}}(?:{_STREET_WORDS})s?\b{_TAIL}",
    # "Kordula-Mangold-Straße 8533", "Jasmijnhof 0"
    rf"\b[A-ZÀ-Þ]{_CONTINENTAL}\s+{_HOUSE}\b{_TAIL}",
    # "97, chemin Grondin", "12 rue de la Paix", "Via Roma 12", "Calle Mayor 48 Piso 3"
    rf"(?:{_HOUSE},?\s+)?\b{_LEADING_STREET}\s+(?:(?:de|del|della|di|la|le|les|des|du|d'|l')\s*)*"
    rf"[A-ZÀ-Þ][\w'’-]*(?:\s+[A-ZÀ-Þ][\w'’-]*){{0,3}}(?:,?\s+\d{{1,4}}[A-Za-z]?\b)?{_TAIL}",
)


@dataclass(frozen=True)
class Finding:
    start: int
    end: int
    entity: str
    score: float

    @property
    def placeholder(self) -> str:
        return PLACEHOLDERS[self.entity]


def _custom_recognizers() -> list[Any]:
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class GroupRecognizer(EntityRecognizer):
        """A regex whose group 1 is the entity (cue words stay in the text)."""

        def __init__(self, entity: str, patterns: Iterable[str], score: float, flags: int = 0) -> None:
            self._patterns = [re.compile(p, flags) for p in patterns]
            self._score = score
            super().__init__(supported_entities=[entity], name=f"{entity.title()}Recognizer")

        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = []
            for pattern in self._patterns:
                for match in pattern.finditer(text):
                    start, end = match.span(1) if pattern.groups else match.span()
                    if end > start:
                        found.append(RecognizerResult(self.supported_entities[0], start, end, self._score))
            return found

    names = GroupRecognizer("PERSON", [rf"{cue}({_NAME})" for cue in _NAME_CUES], 0.6)
    addresses = GroupRecognizer("STREET_ADDRESS", _ADDRESSES, 0.6)
    # Sort codes, account and phone numbers are plain digit runs: only their context words tell
    # them from amounts and reference numbers (Presidio's own context boost needs lemmas, which a
    # blank pipeline does not have).
    sort_code = GroupRecognizer("SORT_CODE", [r"(?i:sort[- ]?code)\D{0,12}?(\d{2}[- ]?\d{2}[- ]?\d{2})\b"], 0.6)
    account = GroupRecognizer(
        "ACCOUNT_NUMBER",
        [r"(?i:account|acct\.?|a/c)(?:\s+(?:number|no\.?|#|nr\.?))?(?:\s+is)?[\s:]+(\d{6,17})\b"], 0.6)
    phone = GroupRecognizer(
        "PHONE_NUMBER",
        # "number" alone, but not a social security, account or id number (their own recognizers type them)
        [r"(?i:call|phone|mobile|(?<!security )(?<!account )(?<!id )(?<!insurance )number|text(?: code)?|tel\.?|"
         r"ring|reach me|whatsapp)\b[^.\d+]{0,30}?"
         r"((?=(?:[ ().+-]*\d){7})(?:\+|00)?\(?\d[\d ().-]{6,}\d(?:\s?(?:x|ext\.?)\s?\d{1,5})?)"], 0.5)

    class LuhnCards(EntityRecognizer):
        """Card numbers of 13-19 digits that pass Luhn, any issuer range (Presidio's list of
        prefixes predates Mastercard's 2-series), grouped by spaces or dashes or not at all."""

        _pattern = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")

        def __init__(self) -> None:
            super().__init__(supported_entities=["CREDIT_CARD"], name="LuhnCardRecognizer")

        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [RecognizerResult("CREDIT_CARD", m.start(), m.end(), 0.8)
                    for m in self._pattern.finditer(text) if _luhn(re.sub(r"\D", "", m.group()))]

    return [names, addresses, sort_code, account, phone, LuhnCards()]


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return 13 <= len(digits) <= 19 and total % 10 == 0


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    """Presidio's analyzer on a blank spaCy pipeline, with this module's recognizers (built once)."""
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        EsNifRecognizer,
        IbanRecognizer,
        IpRecognizer,
        ItFiscalCodeRecognizer,
        PhoneRecognizer,
        UkNinoRecognizer,
        UkPostcodeRecognizer,
        UsItinRecognizer,
        UsSsnRecognizer,
    )

    # The e-mail recognizer checks domains with tldextract, whose default fetches the public
    # suffix list over the network: use the snapshot it ships instead.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)

    class BlankSpacy(SpacyNlpEngine):
        def __init__(self) -> None:
            super().__init__(models=[{"lang_code": "en", "model_name": "blank"}])

        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]  # typed None until loaded

    engine = BlankSpacy()
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (CreditCardRecognizer(), EmailRecognizer(), IbanRecognizer(), IpRecognizer(),
                       PhoneRecognizer(supported_regions=PHONE_REGIONS), UsSsnRecognizer(), UsItinRecognizer(),
                       UkNinoRecognizer(), UkPostcodeRecognizer(), EsNifRecognizer(supported_language="en"),
                       ItFiscalCodeRecognizer(supported_language="en"),
                       *_custom_recognizers()):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])


@lru_cache(maxsize=1)
def _anonymizer() -> Any:
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


@lru_cache(maxsize=1)
def _operators() -> dict[str, Any]:
    from presidio_anonymizer.entities import OperatorConfig

    return {entity: OperatorConfig("replace", {"new_value": placeholder})
            for entity, placeholder in PLACEHOLDERS.items()}


class Redactor:
    """Thread-safe: Presidio's engines are shared, their use is serialised."""

    _lock = threading.Lock()

    def findings(self, text: str, names: Iterable[str] = ()) -> list[Finding]:
        """Non-overlapping findings, longest-then-highest first where they overlap. A name found
        once (or given in ``names``: found elsewhere in the conversation) is found wherever it
        recurs, whole or by any of its words ("my name is Maria Lopez ... thanks, Maria")."""
        return self._choose(text, self._analyze(text), names)

    def _analyze(self, text: str) -> list[Finding]:
        """Presidio's findings above :data:`MIN_SCORE` (the costly pass; overlaps kept)."""
        results: list[Finding] = []
        if not text:
            return results
        with self._lock:
            for offset in range(0, len(text), MAX_TEXT):
                piece = text[offset:offset + MAX_TEXT]
                results += [Finding(r.start + offset, r.end + offset, r.entity_type, r.score)
                            for r in _analyzer().analyze(piece, language="en", entities=list(PLACEHOLDERS))
                            if r.score >= MIN_SCORE]
        return results

    @staticmethod
    def _choose(text: str, analyzed: list[Finding], names: Iterable[str] = ()) -> list[Finding]:
        known = {*names, *(text[f.start:f.end] for f in analyzed if f.entity == "PERSON")}
        results = analyzed + ([Finding(m.start(), m.end(), "PERSON", 0.6) for m in _recurrences(known).finditer(text)]
                              if known else [])
        chosen: list[Finding] = []
        for finding in sorted(results, key=lambda f: (-(f.end - f.start), -f.score, f.start)):
            if all(finding.end <= other.start or finding.start >= other.end for other in chosen):
                chosen.append(finding)
        return sorted(chosen, key=lambda f: f.start)

    def redact_many(self, texts: Iterable[str | None]) -> list[str | None]:
        """Texts of one conversation: a name found in one is redacted in all of them (Presidio
        reads each text once)."""
        texts = list(texts)
        analyzed = [self._analyze(t) if t else [] for t in texts]
        known = {t[f.start:f.end] for t, found in zip(texts, analyzed, strict=True) if t
                 for f in self._choose(t, found) if f.entity == "PERSON"}
        return [None if t is None else _replace(t, self._choose(t, found, known))
                for t, found in zip(texts, analyzed, strict=True)]

    def redact(self, text: str, names: Iterable[str] = ()) -> str:
        """``text`` with each finding replaced by its placeholder (by presidio-anonymizer)."""
        return _replace(text, self.findings(text, names))


def _replace(text: str, findings: list[Finding]) -> str:
    if not findings:
        return text
    from presidio_analyzer import RecognizerResult

    return str(_anonymizer().anonymize(
        text=text, analyzer_results=[RecognizerResult(f.entity, f.start, f.end, f.score) for f in findings],
        operators=_operators()).text)


def _recurrences(names: Iterable[str]) -> re.Pattern[str]:
    """Whole names and their words (3+ letters, not a title or a particle), as whole words."""
    words = set()
    for name in names:
        words.add(name)
        words.update(w for w in re.findall(r"[\w'’-]+", name)
                     if len(w) >= 3 and w[0].isupper() and not re.fullmatch(_PARTICLE, w, re.IGNORECASE)
                     and not re.fullmatch(_TITLE + "?", w + " "))
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![\w])(?:{alternatives})(?![\w])")


def redact_many(texts: Iterable[str | None]) -> list[str | None]:
    """The module's shared :class:`Redactor` on the texts of one conversation (see
    :meth:`Redactor.redact_many`)."""
    return _REDACTOR.redact_many(texts)


def redact(text: str | None) -> str | None:
    """The module's shared :class:`Redactor` on ``text`` (None stays None)."""
    return None if text is None else _REDACTOR.redact(text)


_REDACTOR = Redactor()
