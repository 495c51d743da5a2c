"""Points of interest of the synthetic city: categories, names and short texts."""

from __future__ import annotations

import numpy as np

# category: (base logit, {factor: weight})
CATEGORIES: dict[str, tuple[float, dict[str, float]]] = {
    "restaurant": (0.6, {"commercial": 0.7, "nightlife": 0.4, "affluence": 0.2}),
    "cafe": (0.4, {"commercial": 0.5, "affluence": 0.6}),
    "bar": (-0.2, {"nightlife": 1.3}),
    "nightclub": (-1.4, {"nightlife": 1.7}),
    "fast_food": (0.1, {"commercial": 0.5, "affluence": -0.7}),
    "supermarket": (0.1, {"density": 0.5}),
    "convenience_store": (0.3, {"density": 0.6, "affluence": -0.5}),
    "school": (-0.1, {"density": 0.4, "commercial": -0.4}),
    "kindergarten": (-0.4, {"density": 0.3, "affluence": 0.3}),
    "park": (-0.3, {"greenery": 1.0}),
    "playground": (-0.6, {"greenery": 0.6, "density": 0.3}),
    "clinic": (-0.4, {"density": 0.4}),
    "pharmacy": (-0.3, {"density": 0.4, "commercial": 0.2}),
    "bank": (-0.6, {"commercial": 1.0, "affluence": 0.3}),
    "office": (-0.1, {"commercial": 1.1}),
    "boutique": (-0.9, {"commercial": 0.6, "affluence": 1.1}),
    "gallery": (-1.2, {"affluence": 0.9, "nightlife": 0.4}),
    "hotel": (-0.9, {"commercial": 0.9, "nightlife": 0.4}),
    "workshop": (-0.9, {"industry": 0.8}),
    "car_repair": (-0.7, {"industry": 0.5, "affluence": -0.5}),
    "pawn_shop": (-1.3, {"affluence": -1.1}),
    "gym": (-0.6, {"density": 0.3, "affluence": 0.3}),
    "place_of_worship": (-0.7, {}),
    "hairdresser": (-0.3, {"density": 0.3}),
}

_NOUN = {
    "restaurant": ["Bistro", "Kitchen", "Trattoria", "Grill", "Brasserie"],
    "cafe": ["Café", "Coffee House", "Espresso Bar", "Bakery"],
    "bar": ["Tavern", "Pub", "Bar", "Taproom"],
    "nightclub": ["Club", "Lounge", "Warehouse Club"],
    "fast_food": ["Burger", "Kebab", "Fried Chicken", "Pizza"],
    "supermarket": ["Market", "Supermarket", "Grocer"],
    "convenience_store": ["Mini Mart", "Corner Shop", "Späti"],
    "school": ["Primary School", "High School", "Academy"],
    "kindergarten": ["Kindergarten", "Daycare"],
    "park": ["Park", "Gardens", "Green"],
    "playground": ["Playground"],
    "clinic": ["Clinic", "Health Centre"],
    "pharmacy": ["Pharmacy", "Apotheke", "Chemist"],
    "bank": ["Bank", "Savings", "Credit Union"],
    "office": ["Offices", "Business Centre", "Tower"],
    "boutique": ["Boutique", "Atelier", "Concept Store"],
    "gallery": ["Gallery", "Art Space"],
    "hotel": ["Hotel", "Inn", "Suites"],
    "workshop": ["Works", "Workshop", "Fabrication"],
    "car_repair": ["Auto Repair", "Garage", "Tyres"],
    "pawn_shop": ["Pawn", "Cash Loans", "Gold Buyers"],
    "gym": ["Gym", "Fitness", "Boxing Club"],
    "place_of_worship": ["Church", "Mosque", "Temple", "Synagogue"],
    "hairdresser": ["Hair Studio", "Barber", "Salon"],
}
_PEOPLE = [
    "Rosa",
    "José",
    "Zoë",
    "Łukasz",
    "Ngọc",
    "Søren",
    "Ayşe",
    "Amara",
    "Kenji",
    "Olu",
    "Maria",
    "Priya",
    "Chen",
    "Fatima",
    "Luca",
    "Ines",
    "美玲",
    "Dmitri",
    "Aoife",
    "Tomás",
]
_PLACES = [
    "Riverside",
    "Old Town",
    "Market Street",
    "Hillview",
    "Station",
    "Harbour",
    "Linden",
    "Elm",
    "North End",
    "Canal",
]

_UPSCALE = ["upscale", "elegant", "pricey but worth it", "refined", "stylish"]
_CHEAP = ["cheap", "no-frills", "a bit run-down", "bargain prices", "basic"]
_NEUTRAL = ["friendly staff", "quick service", "clean", "good value", "popular with locals"]
_LATE = ["open late", "lively at night", "great after midnight", "loud on weekends"]
_GREEN = ["next to the park", "leafy street", "quiet and green"]
_BUSY = ["on a busy shopping street", "always crowded", "near the offices"]


def category_probs(f: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Per-region probabilities over categories (rows sum to 1)."""
    names = list(CATEGORIES)
    n = next(iter(f.values())).shape[0]
    logits = np.empty((n, len(names)))
    for j, c in enumerate(names):
        base, weights = CATEGORIES[c]
        logits[:, j] = base + sum(w * f[k] for k, w in weights.items())
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return names, p / p.sum(1, keepdims=True)


def poi_name(category: str, rng: np.random.Generator) -> str:
    """A name; about one POI in five is unnamed (empty), as in real data."""
    if rng.random() < 0.2:
        return ""
    noun = _NOUN[category][int(rng.integers(0, len(_NOUN[category])))]
    if rng.random() < 0.5:
        return f"{_PEOPLE[int(rng.integers(0, len(_PEOPLE)))]}'s {noun}"
    return f"{_PLACES[int(rng.integers(0, len(_PLACES)))]} {noun}"


def poi_text(f: dict[str, float], rng: np.random.Generator) -> str:
    """A short review-like text that hints at affluence, nightlife and greenery; often empty."""
    if rng.random() < 0.3:
        return ""
    bits = []
    u = rng.random()
    p_up = 1 / (1 + np.exp(-1.5 * f["affluence"]))
    if u < 0.7:
        pool = _UPSCALE if rng.random() < p_up else _CHEAP
        bits.append(pool[int(rng.integers(0, len(pool)))])
    bits.append(_NEUTRAL[int(rng.integers(0, len(_NEUTRAL)))])
    if rng.random() < 1 / (1 + np.exp(-(1.5 * f["nightlife"] - 0.5))):
        bits.append(_LATE[int(rng.integers(0, len(_LATE)))])
    if rng.random() < 1 / (1 + np.exp(-(1.5 * f["greenery"] - 1.0))):
        bits.append(_GREEN[int(rng.integers(0, len(_GREEN)))])
    if rng.random() < 1 / (1 + np.exp(-(1.5 * f["commercial"] - 1.0))):
        bits.append(_BUSY[int(rng.integers(0, len(_BUSY)))])
    text = ", ".join(bits)
    return text[0].upper() + text[1:] + "."
