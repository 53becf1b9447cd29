"""Built-in prompt risk classifier: is the user asking a fintech help desk to help with harm?

Harm here means money laundering, structuring deposits, card testing and carding, phishing and
social-engineering texts, identity fraud and KYC evasion, account takeover, sanctions evasion,
tax evasion, money muling, refund fraud and scams against others. Asking *about* these (how to
report fraud, what laundering is, why an account was flagged, what the reporting threshold is)
is not harm, and victims describing what happened to them are not either.

Weighted regular-expression features, summed and squashed by a logistic. Positive features are
intents (evading detection or controls, deceiving people or the bank, using someone else's
identity or account) and instruments (stolen cards, mixers, forged documents), plus weak word
groups; negative ones are the shapes of legitimate questions (definitions, victims, reporting,
legality, "why was my ..."). Deterministic; well under a millisecond per prompt.

It is a fallback with modest recall on phrasings it was not written for (see docs/signals.md):
producers that run their own safety classifier send its verdict in the event's
``metadata.prompt_risk``, and the service prefers that when present.

>>> is_harmful("What's the best way to split my deposits so they stay under the reporting threshold?")
True
>>> is_harmful("What is the reporting threshold for cash deposits?")
False
>>> prompt_risk("How do I freeze my card?") < 0.1
True
"""

from __future__ import annotations

import math
import re

HARMFUL_THRESHOLD: float = 0.5
# The logistic is centred here: a prompt is harmful at the default threshold once the weights of
# its features sum to at least this, e.g. one clear intent, or an instrument plus a request.
_OFFSET = 3.0

# Possessives of a person other than the user. "his/her/their" are left out: "their email" is how
# people pay each other, not a sign of account takeover.
_OTHER = (r"\b(?:someone else's|somebody else's|another person's|other people's|a dead person's|someone's|"
          r"(?:my|a) (?:\w+ )?(?:ex-)?(?:ex|boss|flatmate|partner|dad|mum|brother|sister|wife|husband|friend|mate|"
          r"relative|cousin|neighbour|girlfriend|boyfriend|grandmother|grandfather|uncle|aunt|colleague)'s)")
# What evaders do not want to happen. Not "blocked" or "seen": travellers ask how to pay abroad
# without the card getting blocked, and gift buyers how to pay without a partner seeing.
_DETECTED = (r"(?:flagged|flagging|caught|noticed|notices?|noticing|detected|traced|reported|reporting|spotting|"
             r"recogni[sz]e|realis(?:e|ing)|realiz(?:e|ing)|knowing|suspicious|suspect\w*|finding out|connects?|"
             r"catch(?:es)?)")

# (name, weight, pattern). Patterns run on the lower-cased prompt with apostrophes normalised.
_FEATURES: tuple[tuple[str, float, str], ...] = (
    # --- intents -------------------------------------------------------------------------------
    ("evade_detection", 3.5,
     r"\bwithout (?:\w+ ){0,3}?(?:getting|being|it being) (?:flagged|caught|noticed|detected|traced|reported)"
     r"|\bwithout (?:anyone|anybody|them|him|her|(?:the|my|his|her|their) \w+) (?:\w+ )?(?:knowing|noticing|"
     r"realis\w+|realiz\w+|finding out|suspecting|spotting|recogni[sz]ing)"
     rf"|\bso (?:that )?(?:\w+ ){{0,4}}?(?:doesn't|don't|won't|can't|never|isn't|aren't|wouldn't|does not|do not|"
     rf"will not|cannot|is not) (?:\w+ ){{0,2}}?(?:get |be )?{_DETECTED}"
     rf"|\bso (?:nobody|no one|none of them|no single \w+) (?:\w+ ){{0,2}}?(?:gets? )?{_DETECTED}"
     r"|\bbefore (?:anyone|the bank|they|the card|the owner|it) (?:\w+ )?(?:notices?|finds? out|gets? blocked|"
     r"realises|reports?|flags?)"
     r"|\b(?:bank|system|tax office|taxman|tax man|hmrc|irs|police|authorities|compliance|anyone|nobody|auditors?) "
     r"(?:\w+ )?(?:won't|can't|doesn't|don't|never|cannot|will never) (?:ever )?(?:find|see|notice|know|catch|"
     r"trace|spot|report|flag)"
     r"|\b(?:under|below|beneath|off) the radar|\bwithout (?:raising|setting off) (?:any )?(?:suspicion|alarms?|"
     r"red flags?)|\buntraceable|\b(?:can't|cannot) be traced|\b(?:impossible|hard|harder|difficult) to trace"
     r"|\btraced? back to me|\bno (?:alarm|flag|alert|red flag)s? (?:goes|go|gets?|is|are) (?:off|raised|triggered)"
     r"|\bso (?:it's|it is|it isn't|they're|they are) not (?:all )?(?:under|in) my name"
     r"|\bwithout (?:any )?questions?(?: being asked)?|\bno questions asked"
     r"|\bso (?:that )?(?:\w+ ){0,3}?(?:filters?|checks?|screening|system|bank|compliance) (?:\w+ )?"
     r"(?:misses|miss|ignores?|overlooks?) (?:it|them|me)"),
    ("evade_controls", 3.5,
     r"\b(?:avoid|avoids|evade|dodge|get(?:ting)? (?:around|past|round)|bypass|beat|fool|slip past|"
     r"stay (?:just )?(?:under|below)|keep (?:\w+ ){0,3}?(?:just )?(?:under|below)|just (?:under|below)|"
     r"without triggering)\b(?:\W+\w+){0,6}?\W+"
     r"(?:(?<!credit )report\w*|threshold|ctr|sar|screening|sanctions?|kyc|verification|(?:fraud|kyc|aml|security|"
     r"identity|id|sanctions|compliance|liveness|background) checks?|detection|compliance|aml|anti-money\w*|liveness|"
     r"two-factor|2fa|authentication|3-d secure|spam filters?|audit\w*)\b"),
    ("pass_checks_dishonestly", 2.0,
     r"\bpass(?:es|ing)? (?:your |the )?(?:kyc|verification|proof of address|identity)|\bpasses verification"
     r"|\bclears? (?:the |your )?(?:sanctions?|kyc|aml|fraud|compliance) (?:checks?|screening)"),
    ("deceive_people", 3.5,
     r"\b(?:convince|persuade|trick|lure|pressure)\w* (?:an? |the |my )?(?:\w+ ){0,2}?(?:someone|people|person|"
     r"pensioners|customers|victims?|elderly|grandmother|man|woman|seller|company|team|them|support|students)"
     r" (?:\w+ ){0,4}?(?:to|into) (?!protect)"
     r"|\bget(?:s|ting)? (?:people|customers|them|someone|users|victims) to (?:type|enter|click|read|approve|share)"
     r"|\bask(?:s|ing)? (?:\w+ ){0,2}?(?:customers|people|users|them) for (?:their )?(?:login|password|pin|card|"
     r"details|passcode)|\b(?:asking|ask) for the pin"
     r"|\b(?:convince|persuade|trick)\w* (?:\w+ ){0,6}?so (?:they|he|she) (?:\w+ )?(?:move|send|pay|transfer|give|wire)"
     r"|\b(?:their|his|her) (?:\w+ )?(?:money|savings|funds) (?:over )?to me\b|\bpays? me instead"
     r"|\bto (?:give|hand|send|tell|read) me (?:her|his|their) (?:\w+ )?(?:card|pin|login|password|passcode|details|"
     r"savings|codes?)\b"
     r"|\b(?:sell\w*|advertis\w+|list\w*) (?:\w+ ){0,4}?(?:i|that i) (?:don't|do not) (?:actually |really )?"
     r"(?:have|own)\b"
     r"|\b(?:campaign|product|tickets?|items?|goods|service|job|event|charity)s? (?:\w+ ){0,2}?(?:i'll never|"
     r"i will never|i won't ever|that doesn't exist|that don't exist)"
     r"|\bget (?:my |the |some )?(?:grandparents|old people|elderly people|seniors|pensioners|strangers|victims) "
     r"(?:\w+ ){0,2}?to (?:send|pay|transfer|give|hand|wire|move|read|tell|share|lend|sign)"),
    ("write_deception", 1.5,
     r"^\W*(?:write|draft|create|make|compose|generate|give me|help me (?:write|make|create))\b.*\b(?:pretend\w*|"
     r"posing as|impersonat\w+|claiming to be|looks? (?:exactly )?like|from ['\"]?(?:hmrc|the irs|the bank|"
     r"your bank|the police)|telling (?:people|customers|them))"),
    ("phishing_lure", 2.0,
     r"\b(?:(?:will be|is being|has been) (?:closed|locked|suspended|frozen|blocked|deleted) (?:\w+ ){0,3}?unless"
     r"|unless (?:they|you) (?:call|click|confirm|verify|pay|send|update|enter)"
     r"|(?:click|tap) (?:on )?(?:a|the|this) link to (?:verify|confirm|unlock|update|claim))"),
    ("impersonate", 2.0,
     r"\b(?:pretend\w*|posing as|impersonat\w+|claiming to be|as their bank|spoof\w*"
     r"|looks? (?:exactly )?like (?:it's |it is )?(?:from|an? official|a real|your)|from ['\"]?hmrc)"),
    ("deceive_bank", 3.5,
     r"\b(?:make (?:the bank|you|them) believe"
     r"|(?:something|an item|a parcel|the item|the order) (?:i |that was |that )?actually "
     r"(?:received|delivered|arrived)"
     r"|even though (?:the|it|my) (?:\w+ )?(?:arrived|was delivered)"
     r"|even though i (?:\w+ ){0,2}?(?:took|made|received|authori[sz]ed|sent|spent)"
     r"|(?:pretend|claim|say|tell (?:you|them|the bank)|report my own) (?:\w+ ){0,5}?(?:was|as|were) (?:an? )?"
     r"(?:fraud\w*|stolen|unauthori[sz]ed|not received|hacked|someone else)"
     r"|so (?:that )?i (?:never|don't|won't) (?:have to )?(?:re)?pay (?:it |them |the \w+ )?back"
     r"|(?:i|we) (?:won't|will never|never intend to|have no intention of) (?:re)?pay(?:ing)? (?:it |them )?back"
     r"|without (?:ever )?(?:re)?paying (?:it |them )?back)"),
    ("false_claim", 3.5,
     r"^(?=.*\b(?:refund\w*|chargebacks?|disput\w+|claim\w*|fraud|unauthori[sz]ed|stolen|not received)\b)"
     r".*\b(?:willingly|knowingly|on purpose|myself|actually (?:received|made|took|got)|"
     r"keep (?:the|my) (?:item|product|goods|parcel|order))\b"),
    ("hide_money", 3.0,
     r"\b(?:(?:hide|hiding|conceal\w*|disguis\w+) (?:\w+ ){0,5}?(?:from|away from)|keep\w* (?:\w+ ){0,5}?"
     r"(?:out of sight of|hidden from|secret from)) (?:the )?(?:taxman|tax man|hmrc|irs|tax office|"
     r"tax authorities|authorities|bank|compliance|auditors?|police)\b(?!')"
     r"|\b(?:hide|hiding) (?:\w+ ){0,4}?(?:income|earnings|savings|money|cash|profits?|funds|tips|wealth|assets|"
     r"source|origin)\b"
     r"|\b(?:conceal\w*|disguis\w+|mask\w*|obscur\w+) (?:\w+ ){0,4}?(?:income|earnings|savings|money|cash|profits?|"
     r"funds|source|origin|name|who|where|payments?|transfers?)\b"
     r"|\bso (?:that )?(?:neither of us|nobody|no one) (?:\w+ )?(?:pays?|declares?)"
     r"|\bso (?:that )?(?:i|we|they|he|she) (?:don't|doesn't|won't|never|do not|can avoid) (?:have to )?"
     r"(?:pay|declare)\b|\b(?:avoid|without) declaring|\bunderreport\w*|\boff the books|\btax haven"),
    ("admitted_intent", 3.0,
     r"\bi (?:want|need|plan|'d like|would like) to do (?:the same|it|this|that)\b(?! to me)|\bso i can do the same"
     r"|\b(?:isn't|is not|that isn't) mine|\bwithout (?:him|her|them) knowing"
     r"|\b(?:dirty|criminal) (?:money|cash|proceeds)|\bcriminal proceeds|\bdrug (?:money|sales|deals)"
     r"|\b(?:selling|sell|dealing) (?:weed|drugs|cocaine|coke|pills)"
     r"|\billegal (?:cash|money|funds|earnings|income|profits)"
     r"|\b(?:cash|money|proceeds|funds) (?:\w+ ){0,2}?from (?:a |the )?(?:robbery|burglary|theft|heist)"
     r"|\bstolen (?:\w+ )?(?:cards?|card numbers|card details|passports?|ids?|identit\w+|accounts?|logins?)"
     r"|\bwithout (?:his|her|their|the owner's|the account holder's) (?:permission|consent|knowledge)"
     r"|\b(?:evad\w+|dodg\w+) (?:\w+ )?tax(?:es)?\b|\btax evasion"),
    # --- instruments and schemes -----------------------------------------------------------------
    ("laundering_terms", 2.5,
     r"\b(?:launder\w*|wash(?:ing)? (?:\w+ )?money|clean(?:ing|est)? (?:\w+ )?(?:cash|money|funds|way to get)|"
     r"smurf\w*|mixers?|tumblers?|shell compan\w+|front compan\w+|layer(?:ing)? (?:\w+ )?funds|"
     r"structure my (?:cash )?deposits|into clean|makes? (?:it|the money|the cash|the funds|money|cash|funds) "
     r"(?:look )?(?:clean|legit\w*)|(?:money|cash|funds) look (?:clean|legit\w*))"),
    ("structuring_terms", 2.0,
     r"\b(?:break|breaking|split|splitting|spread|spreading|chop\w*)(?: it| them)?(?: up| down)? (?:\w+ ){0,3}?"
     r"(?:cash|deposits?)\b"),
    ("fraud_instruments", 2.5,
     r"\b(?:card dumps?|dumps|fullz|cloned cards?|skimm\w+|skim cards?|carders?|carding|card testing|"
     r"leaked (?:file|passwords?|data)|(?:data )?breach|brute.?force|malware|sim swap|deepfake|synthetic identit\w+|"
     r"phishing emails?|fake (?:\w+ )?(?:login|id|passport|utility bill|invoices?|payment|confirmation|charity|rental|"
     r"listing|investment|opportunit\w+|scheme|refund|job|website|page|bank statements?|payslips?|documents?|names?|"
     r"identit\w+|accounts?|receipts?|expenses|records|books)|fake (?:an? )?(?:\S+ ){0,3}?(?:claims?|disputes?)|"
     r"(?:valid|working|live) (?:credit |debit )?(?:card numbers|cards|cvvs?)|forg(?:e|ed|ing)|photoshop\w*|"
     r"(?:edit\w*|alter\w*|doctor\w*|tamper\w*) (?:\w+ ){0,3}?(?:passports?|ids?|licen[cs]es?|documents?|"
     r"statements?|payslips?|bills?)|(?:passport|id|document|statement|payslip) (?:\w+ )?(?:edited|altered|"
     r"doctored|tampered)|edited photos?|made-up names?|pump-and-dump|ponzi|"
     r"(?:which (?:ones|cards|of them)|ones|cards|numbers) (?:that )?still work|"
     r"which (?:ones |cards |of them )?are (?:still )?(?:live|valid|working)|"
     r"(?:\d{2,}|hundreds of|thousands of|a list of|a batch of|a bunch of|a load of|a pile of|piles of|lots of|"
     r"loads of|many|multiple) (?:credit |debit )?card (?:numbers|details)|card (?:numbers|details) in bulk)\b"),
    ("other_persons_identity", 2.5,
     rf"{_OTHER} (?:\w+ )?(?:id|passport|details|login|password|codes?|card details|banking|driving licen[cs]e|"
     r"licen[cs]e|pin|national insurance|social security)\b"
     r"|\b(?:his|her|their) (?:\w+ )?(?:login|password|pin|passcode|security codes?|one-time (?:codes?|passwords?))\b"
     r"|\bin (?:his|her|their|someone else's) name|\blog in as|\bget into (?:someone|another|a dead)"
     r"|\b(?:intercept|read) (?:\w+ ){0,3}?(?:codes|one-time|sms|passwords)"
     rf"|\b(?:reset|take over) {_OTHER} (?:\w+ )?(?:accounts?|app|password)|\btake over (?:\w+ )?accounts\b"
     rf"|\b(?:log ?in(?:to)?|sign in(?:to)?|get into|access|break into|hack into|empty|drain) {_OTHER}"
     r" (?:\w+ )?(?:account|app|banking|savings|card)"),
    ("sanctions_route", 2.0,
     r"\b(?:sanctioned\b|sanctions list|route\w* (?:\w+ ){0,4}?through|intermediar\w+)"),
    ("sanctions_evasion", 3.5,
     r"^(?=.*\bsanction).*\b(?:without (?:\w+ ){0,2}?(?:blocking|stopping|freezing|flagging|catching|noticing)"
     r"|get(?:ting)? (?:it )?(?:around|past|through)|slip (?:it )?(?:past|through))"),
    ("muling", 2.5,
     r"\b(?:let (?:them|him|her|someone|people|others|strangers) use my (?:bank )?account|"
     r"(?:rent|lend|loan) (?:out )?my (?:bank )?account|sell my (?:bank )?(?:account|login)|receive and forward|"
     r"money mules?|hand over (?:the |my |their )?(?:cards?|accounts?|logins?|bank details)|"
     r"buy (?:a |an |some )?(?:verified|aged|ready-made|opened|dormant) (?:bank )?accounts?|"
     r"buy (?:some |other people's )?bank accounts|recruit\w* (?:\w+ ){0,3}?to (?:receive|move|transfer)|"
     r"receive (?:\w+ ){0,5}?(?:and|then) (?:pass|forward|send|move|transfer)\w* (?:it|them) on|"
     r"use (?:their|other people's|people's|someone's|someone else's) (?:bank )?accounts? (?:to|for))"),
    ("request", 0.5,
     r"(?:^|[.?!]\s)\W*(?:how (?:do|can|could|would|should|many) (?:i|we)|"
     r"what's (?:the|a) (?:best|easiest|cleanest|safest|quickest|quick|good|simple|clever|low-key|trick)|which|"
     r"where can i|help me|tell me|give me|write|draft|create|make|generate|explain how|can you|can i|"
     r"is there a way|i need to|i want to)"),
    # --- shapes of legitimate questions ----------------------------------------------------------
    ("victim", -3.0,
     r"\b(?:i was|i've been|i have been|i got|i received|i clicked|i gave|i entered|"
     r"someone (?:phished|scammed|hacked|opened|called|is using|got into|is trying|stole)|"
     r"(?:my|our) (?:\w+ )?(?:mum|dad|mother|father|grandmother|nephew|son|daughter|friend) (?:was|keeps|got|is)|"
     r"don't recognise|didn't ask for|without my knowledge|victim|take over my account|"
     r"(?<!say )(?<!claim )(?<!pretend )(?:my|our) (?:\w+ ){0,2}?(?:was|were|has been|have been|got) "
     r"(?:stolen|hacked|compromised|cloned|skimmed|phished|leaked))"),
    ("safety_question", -2.5,
     r"\bis (?:this|it|that) (?:a )?(?:scam|real|legit\w*|genuine|safe|fake)|\bwas (?:that|it|this) (?:a )?scam"
     r"|\bhow (?:do|can) i (?:report|protect|tell|know|check (?:that|if|it's)|spot|block|turn on|lock \w+ out|"
     r"stop (?:getting|receiving))"
     r"|\bkeep (?:\w+ ){1,2}safe"
     r"|\b(?:report|reporting) (?:it|this|a|fraud|the|suspicious|phishing)|\bwhat (?:should|do|can) (?:i|we) do"
     r"|\bso (?:that )?(?:i|we) can (?:spot|avoid|recogni[sz]e|protect|report|tell|check|stay safe)"
     r"|\bshould i say no|\bwarning signs|\bhow can i make sure|\bprotect\b|\bavoid (?:getting |being )?scammed"),
    ("report_question", -4.5, r"^\W*(?:how|where) (?:do|can|should) i report\b(?! my own)"),
    ("definition", -2.5,
     r"^\W*(?:what(?:'s| is| are| does)\s+(?!.*\b(?:best|easiest|cleanest|safest|quickest|trick|way to)\b)"
     r"(?:an?\s+|the\s+)?[\w\s'-]{1,40}?(?:\?|\bmean\b|\bstand for\b)"
     r"|what's the difference|(?:can you )?explain what|what counts as"
     r"|what are the (?:penalties|rules|warning signs))"),
    ("education", -4.0,
     r"\bhow (?:do|does|can|would) (?:banks?|you|the bank|(?:money )?launderers|criminals|scammers|fraudsters|"
     r"thieves|hackers|carders|gangs)\b (?:usually |typically |normally )?(?:detect|catch|stop|spot|try|use|work|"
     r"trick|prevent|protect|get|find|target|pick)"
     r"|\bwriting an? (?:essay|article|report|thesis)|\bstudying for|\bexam\b|\btraining course"
     r"|\bfor (?:a |an |my )?(?:school|university|essay|article|research|class|course)"),
    # A yes/no or "why" question with no first person is about the world, not the asker's plan.
    ("impersonal_question", -1.5,
     r"^(?!.*\b(?:i|i'm|i've|i'd|i'll|me|my|mine|we|our|us)\b)\W*(?:is (?!there a way)|are|does|do|"
     r"why (?:is|are|do|does)|how (?:common|often|much|many|does)|what happens)\b"),
    ("legality", -2.0, r"\b(?:is it (?:il)?legal\b|legally\b|above board|penalt(?:y|ies)\b)"),
    ("own_account", -2.0,
     r"^\W*why (?:was|did|do|does|is|are|has|have|were) (?:my|you|i)\b"
     r"|\b(?:power of attorney|joint account|read-only access|late (?:husband|wife|partner|father|mother|dad|mum)|"
     r"passed away|bereave\w*|executor|probate)"),
)
# (name, weight per distinct word, most words counted, pattern): broad vocabulary for phrasings the
# features above miss. Each word is weak alone; two groups together, or a group with an instrument,
# make a prompt harmful unless a legitimate shape above pulls it back.
_VOCABULARY: tuple[tuple[str, float, int, str], ...] = (
    ("evasion_words", 1.0, 2,
     r"\b(?:flagged|caught|noticed?|noticing|traced?|traceable|untraceable|detect\w*|unnoticed|undetected|"
     r"suspicion|radar|anonymous\w*|secretly|quietly|discreet\w*|unreported|off the books|avoid\w*|bypass\w*|"
     r"get around|loophole|without (?:\w+ ){0,2}?(?:knowing|noticing|permission|consent|questions))\b"),
    ("crime_words", 1.0, 2,
     r"\b(?:launder\w*|stolen|steal\w*|fake|forg(?:e|ed|ing|ery)|counterfeit|cloned?|dumps|fullz|phish\w*|"
     r"scam\w*|sanction\w*|mules?|smurf\w*|ponzi|pyramid scheme|hack\w*|skimm\w*|bribe\w*|black market|"
     r"dark ?web|illegal\w*|illicit|dirty|evade|evasion|fraud\w*|blacklisted|embezzl\w+|extort\w*)\b"),
    ("target_words", 1.0, 1,
     r"\b(?:someone(?: else)?'s|somebody's|another person's|other people's|people's|customers'|strangers?|"
     r"victims?|pensioners|elderly|vulnerable|lonely|their (?:login|password|pin|card|account|savings|details))"),
    ("deception_words", 1.0, 2,
     r"\b(?:trick\w*|deceiv\w+|pretend\w*|impersonat\w+|pos(?:e|ing) as|disguis\w+|conceal\w*|hide|hiding|"
     r"lie to|lying to|fool\w*|manipulat\w+|convinc\w+|persuad\w+|spoof\w*|cover story|believable|on paper|"
     r"supposedly|(?:a )?(?:different|false|fake|another) name)\b"),
)
_COMPILED = tuple((name, weight, re.compile(pattern)) for name, weight, pattern in _FEATURES)
_COMPILED_VOCABULARY = tuple((name, weight, cap, re.compile(pattern)) for name, weight, cap, pattern in _VOCABULARY)
FEATURE_NAMES: tuple[str, ...] = (*(name for name, _, _ in _FEATURES), *(name for name, _, _, _ in _VOCABULARY))


def risk_features(prompt: str) -> dict[str, float]:
    """The weight each firing feature adds to the risk of ``prompt``, in :data:`FEATURE_NAMES` order.

    >>> risk_features("How do I report fraud on my account?")
    {'request': 0.5, 'safety_question': -2.5, 'report_question': -4.5, 'crime_words': 1.0}
    """
    text = _normalise(prompt)
    fired = {name: weight for name, weight, pattern in _COMPILED if pattern.search(text)}
    for name, weight, cap, pattern in _COMPILED_VOCABULARY:
        words = len(set(pattern.findall(text)))
        if words:
            fired[name] = weight * min(cap, words)
    return fired


def prompt_risk(prompt: str) -> float:
    """Probability-like risk in [0, 1] that ``prompt`` asks for help with financial harm."""
    total = sum(risk_features(prompt).values())
    return 1.0 / (1.0 + math.exp(_OFFSET - total))


def is_harmful(prompt: str, threshold: float = HARMFUL_THRESHOLD) -> bool:
    """True when :func:`prompt_risk` of ``prompt`` is at least ``threshold`` (in (0, 1])."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    return prompt_risk(prompt) >= threshold


def _normalise(prompt: str) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    return prompt.lower().replace("\u2019", "'")
