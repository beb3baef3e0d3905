"""The institutions of the synthetic cohort and how each writes its records.

Every person, identifier and institution here is invented. Manufacturers and
model names are real products, so that headers look like those of real scanners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Person:
    """One synthetic person, as the same human would be at every site."""

    family_name: str
    given_name: str
    middle_name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class Site:
    """An institution: its scanner, protocol and record-keeping habits."""

    folder: str
    institution_name: str
    issuer_of_patient_id: str
    patient_id_format: str
    accession_format: str
    name_style: str
    manufacturer: str
    model_name: str
    station_name: str
    software_versions: str
    study_description: str
    thin_series_description: str
    thick_series_description: str
    thin_kernel: str
    thick_kernel: str
    thin_slice_thickness_mm: float
    field_of_view_mm: float
    feet_first: bool
    unsigned_pixels: bool
    kvp: float
    referring_physicians: tuple[str, ...]
    # Series Number of the localizer, thin, thick and dose report series.
    series_numbers: tuple[int, int, int, int]


SITES: tuple[Site, ...] = (
    Site(
        folder="northgate",
        institution_name="Northgate General Hospital",
        issuer_of_patient_id="NORTHGATE.MRN",
        patient_id_format="NG{:07d}",
        accession_format="NGA{:08d}",
        name_style="family_given_initial",
        manufacturer="SIEMENS",
        model_name="SOMATOM Definition AS+",
        station_name="CTAWP73301",
        software_versions="syngo CT VA48A",
        study_description="CT CHEST W CONTRAST",
        thin_series_description="Thorax 1.5 B70f",
        thick_series_description="Thorax 5.0 B31f",
        thin_kernel="B70f",
        thick_kernel="B31f",
        thin_slice_thickness_mm=1.5,
        field_of_view_mm=360.0,
        feet_first=False,
        unsigned_pixels=False,
        kvp=120.0,
        referring_physicians=("Okafor^Adaeze", "Lindqvist^Per^M"),
        series_numbers=(1, 2, 3, 501),
    ),
    Site(
        folder="riverside",
        institution_name="RIVERSIDE IMAGING CENTER",
        issuer_of_patient_id="RIC",
        patient_id_format="R{:06d}",
        accession_format="{:010d}",
        name_style="upper_family_given",
        manufacturer="GE MEDICAL SYSTEMS",
        model_name="LightSpeed VCT",
        station_name="RICCT01",
        software_versions="LightSpeedverrel",
        study_description="CT THORAX WITH IV CONTRAST",
        thin_series_description="2.5MM LUNG",
        thick_series_description="5MM STND",
        thin_kernel="LUNG",
        thick_kernel="STANDARD",
        thin_slice_thickness_mm=2.5,
        field_of_view_mm=400.0,
        feet_first=False,
        unsigned_pixels=False,
        kvp=120.0,
        referring_physicians=("HARTMANN^GRETA", "NAKASHIMA^KENJI"),
        series_numbers=(1, 3, 2, 999),
    ),
    Site(
        folder="lakeside",
        institution_name="Lakeside Community Hospital",
        issuer_of_patient_id="urn:oid:2.25.4242.7",
        patient_id_format="{:04d}-{:04d}",
        accession_format="LK{:07d}",
        name_style="lower_given_family",
        manufacturer="Philips",
        model_name="Brilliance 64",
        station_name="LCH-CT2",
        software_versions="3.5.5",
        study_description="Chest CT with contrast",
        thin_series_description="Lung 2mm YC",
        thick_series_description="Mediastinum 5mm B",
        thin_kernel="YC",
        thick_kernel="B",
        thin_slice_thickness_mm=2.0,
        field_of_view_mm=340.0,
        feet_first=True,
        unsigned_pixels=True,
        kvp=100.0,
        referring_physicians=("Dubois^Camille", "Mensah^Kwame^A"),
        series_numbers=(1, 201, 202, 1001),
    ),
)

_FEMALE_GIVEN = ("Amelia", "Ingrid", "Rosa", "Yuki", "Fatima", "Helena", "Noor", "Tamsin")
_MALE_GIVEN = ("Bruno", "Tomas", "Idris", "Callum", "Matteo", "Oren", "Dmitri", "Emeka")
_MIDDLE = ("Jane", "Marie", "Lee", "Quinn", "Ray", "Skye", "Wren", "Ash")
_FAMILY = (
    "Ashbury", "Brennick", "Calloway", "Delacroix", "Everly", "Fenwick",
    "Gallardo", "Hollis", "Ivanova", "Jarrow", "Kestrel", "Lowther",
)  # fmt: skip


def draw_person(rng: np.random.Generator, baseline_year: int) -> Person:
    """Draw an invented adult, 45 to 80 years old in the baseline year."""
    sex = str(rng.choice(["F", "M"]))
    given = str(rng.choice(_FEMALE_GIVEN if sex == "F" else _MALE_GIVEN))
    year = baseline_year - int(rng.integers(45, 81))
    birth_date = f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    return Person(
        family_name=str(rng.choice(_FAMILY)),
        given_name=given,
        middle_name=str(rng.choice(_MIDDLE)),
        birth_date=birth_date,
        sex=sex,
    )


def patient_name(person: Person, site: Site) -> str:
    """Format the person's name as the site's registration desk writes it (a DICOM PN value)."""
    if site.name_style == "family_given_initial":
        return f"{person.family_name}^{person.given_name}^{person.middle_name[0]}"
    if site.name_style == "upper_family_given":
        return f"{person.family_name}^{person.given_name}".upper()
    if site.name_style == "lower_given_family":
        return f"{person.given_name} {person.family_name}".lower()
    raise ValueError(
        f"site {site.folder}: invalid name_style {site.name_style!r}, expected "
        "family_given_initial, upper_family_given or lower_given_family"
    )


def patient_id(site: Site, rng: np.random.Generator) -> str:
    """Draw a Patient ID in the site's format, each number field below 10 000."""
    count = site.patient_id_format.count("{")
    return site.patient_id_format.format(*(int(rng.integers(0, 10_000)) for _ in range(count)))


def accession_number(site: Site, rng: np.random.Generator) -> str:
    """Draw an Accession Number in the site's format."""
    return site.accession_format.format(int(rng.integers(0, 10_000_000)))
