"""How each registered dataset is built: deterministic functions of their parameters.

The synthetic cohorts and load series are the generators the course notebooks used to define
inline, unchanged, so a registered file reproduces what the notebooks computed before. Every
generator returns a pandas DataFrame; ``aifactory data publish`` writes it as CSV and checks the
bytes against the sha256 the registry records (same parameters, same bytes).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from aifactory.data import registry

# ---------------------------------------------------------------- ED chest-pain cohort (ai-healthcare)

HOSPITALS = {  # how the hospitals differ (site B is the external validation site)
    "A": dict(share_female=0.45, age_mean=62.0, risk_shift=0.0, assay_scale=1.00, assay_noise=0.90),
    "B": dict(share_female=0.50, age_mean=69.0, risk_shift=0.7, assay_scale=0.55, assay_noise=1.40),
}
URL_NGL = {"F": 16.0, "M": 34.0}  # sex-specific 99th-percentile upper reference limits of troponin


def chest_pain_cohort(n: int, seed: int, site: str = "A") -> pd.DataFrame:
    """Synthetic chest-pain cohort (NOT real patients): one row per emergency-department patient."""
    s = HOSPITALS[site]
    g = np.random.default_rng(seed)
    female = g.random(n) < s["share_female"]
    age = np.clip(g.normal(s["age_mean"], 13.0, n), 18, 95)
    diabetes = g.random(n) < np.clip(0.10 + 0.004 * (age - 60), 0.02, 0.5)
    smoker = g.random(n) < 0.25
    sbp = g.normal(132.0, 18.0, n) + 0.35 * (age - 60)
    bmi = g.normal(27.5, 4.5, n)
    logit = (-3.4 + 0.045 * (age - 60) + 0.2 * (~female) + 0.7 * diabetes + 0.6 * smoker
             + 0.012 * (sbp - 132) + s["risk_shift"])
    acs = g.random(n) < 1 / (1 + np.exp(-logit))
    url = np.where(female, URL_NGL["F"], URL_NGL["M"])  # lower troponin baseline in women
    log_trop = np.log(url) - 1.0 + s["assay_noise"] * g.normal(size=n) + acs * g.normal(1.2, 0.4, n)
    troponin = s["assay_scale"] * np.exp(log_trop)
    crp = np.exp(np.log(3.0) + 0.9 * g.normal(size=n) + 0.45 * acs)
    heart_rate = g.normal(80.0, 14.0, n) + 7.0 * acs
    creatinine = g.normal(80.0, 18.0, n) + 0.6 * (age - 60) - 12.0 * female
    return pd.DataFrame({
        "age": age.round(0), "sex": np.where(female, "F", "M"), "systolic_bp": sbp.round(0),
        "heart_rate": heart_rate.round(0), "bmi": bmi.round(1), "diabetes": diabetes.astype(int),
        "smoker": smoker.astype(int), "troponin_ngl": troponin.round(1), "crp_mgl": crp.round(1),
        "creatinine_umoll": creatinine.round(0), "site": site, "acs": acs.astype(int)})


# ---------------------------------------------------------------- regional load and solar (energy-forecasting)


def _public_holidays(first_year: int, last_year: int) -> set:
    from dateutil.easter import easter

    holidays = set()
    for year in range(first_year, last_year + 1):
        e = pd.Timestamp(easter(year))
        holidays |= {pd.Timestamp(year, 1, 1), pd.Timestamp(year, 4, 27), pd.Timestamp(year, 12, 25),
                     pd.Timestamp(year, 12, 26), e - pd.Timedelta(days=2), e + pd.Timedelta(days=1),
                     e + pd.Timedelta(days=39), e + pd.Timedelta(days=50)}
    return holidays


def energy_load_series(n_days: int, seed: int) -> pd.DataFrame:
    """Hourly load (MW), solar production (MW), temperature and its day-ahead forecast (degC)."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2022-01-01", periods=24 * n_days, freq="h", name="time")  # local standard time, no DST
    n = len(idx)
    hour, dow, doy = idx.hour.to_numpy(), idx.day_of_week.to_numpy(), idx.day_of_year.to_numpy()
    years = np.arange(n) / (24 * 365.25)  # time since start, in years
    holiday = idx.normalize().isin(list(_public_holidays(idx[0].year, idx[-1].year)))

    # temperature: annual cycle + daily cycle + weather systems that last days (an AR(1) anomaly)
    anomaly, shocks = np.zeros(n), rng.normal(0, 0.45, n)
    for i in range(1, n):
        anomaly[i] = 0.99 * anomaly[i - 1] + shocks[i]
    temp = 10 - 8 * np.cos(2 * np.pi * (doy - 15) / 365.25) + 4 * np.cos(2 * np.pi * (hour - 15) / 24) + anomaly
    # the day-ahead weather forecast misses by about 1.2 degC, with errors that persist for hours
    fc_err, fc_shocks = np.zeros(n), rng.normal(0, 1.2 * np.sqrt(1 - 0.95 ** 2), n)
    fc_err[0] = rng.normal(0, 1.2)
    for i in range(1, n):
        fc_err[i] = 0.95 * fc_err[i - 1] + fc_shocks[i]
    temp_fc = temp + fc_err

    # load: daily profile per day type x (1 + heating/cooling) x growth x persistent noise
    workday = np.array([.72, .69, .67, .66, .67, .72, .83, .95, 1.02, 1.04, 1.05, 1.05,
                        1.04, 1.03, 1.02, 1.02, 1.04, 1.09, 1.12, 1.10, 1.04, .96, .86, .78])
    saturday = np.array([.74, .70, .67, .65, .64, .65, .69, .75, .83, .90, .94, .96,
                         .95, .93, .91, .90, .92, .98, 1.02, 1.01, .97, .91, .84, .78])
    sunday = 0.94 * saturday  # holidays look like Sundays
    profile = np.where(holiday | (dow == 6), sunday[hour], np.where(dow == 5, saturday[hour], workday[hour]))
    felt = pd.Series(temp).ewm(halflife=12).mean().to_numpy()  # buildings react with a delay
    weather = 0.018 * np.clip(14 - felt, 0, None) + 0.025 * np.clip(felt - 20, 0, None)
    noise, eps = np.zeros(n), rng.normal(0, 0.006, n)
    for i in range(1, n):
        noise[i] = 0.9 * noise[i - 1] + eps[i]
    load = 1000 * profile * (1 + weather) * (1 + 0.015 * years) * (1 + noise)

    # solar: clear-sky shape from the sun's elevation at 52 degrees north, reduced by clouds
    lat, decl = np.deg2rad(52.0), np.deg2rad(23.44) * np.sin(2 * np.pi * (284 + doy) / 365)
    sin_elev = (np.sin(lat) * np.sin(decl)
                + np.cos(lat) * np.cos(decl) * np.cos(np.deg2rad(15 * (hour + 0.5 - 12))))
    clear_sky = np.clip(sin_elev, 0, None) ** 1.2
    cloud_day, z = np.zeros(n_days), rng.normal(0, 1, n_days)
    for d in range(1, n_days):
        cloud_day[d] = 0.6 * cloud_day[d - 1] + 1.5 * z[d]  # cloudy spells last a few days
    cloud = 1 / (1 + np.exp(-(cloud_day[np.arange(n) // 24] + rng.normal(0, 0.4, n))))
    capacity = 400 * (1 + 0.10 * years)  # 10 % new panels per year
    solar = capacity * 0.9 * clear_sky * (1 - 0.9 * cloud ** 1.5)

    return pd.DataFrame({"load_mw": load.round(1), "solar_mw": solar.round(1), "temp_c": temp.round(1),
                         "temp_fc_c": temp_fc.round(1), "holiday": holiday,
                         "solar_capacity_mw": capacity.round(1)}, index=idx)


# ---------------------------------------------------------------- pseudonymised admissions (regional-health)

DIAGNOSIS_GROUPS = ("I20-I25 ischaemic heart disease", "I50 heart failure", "J44 COPD", "E11 type 2 diabetes",
                    "N18 chronic kidney disease", "J18 pneumonia")


def pseudonymised_admissions(n: int, seed: int, pseudonym_key: str = "synthetic-demo-key") -> pd.DataFrame:
    """Synthetic hospital admissions in the shape of a pseudonymised regional extract (NOT real people).

    Direct identifiers are replaced by keyed hashes, ages by 5-year bands, addresses by the
    2-digit postcode area, as a hospital's pseudonymisation service would deliver them.
    """
    g = np.random.default_rng(seed)
    pseudonyms = [hashlib.sha256(f"{pseudonym_key}:{i}".encode()).hexdigest()[:16] for i in range(n)]
    age = np.clip(g.normal(66.0, 15.0, n), 18, 99).astype(int)
    female = g.random(n) < 0.48
    diagnosis = g.choice(len(DIAGNOSIS_GROUPS), size=n, p=[0.22, 0.18, 0.17, 0.16, 0.12, 0.15])
    admitted = pd.Timestamp("2025-01-01") + pd.to_timedelta(g.integers(0, 365, n), unit="D")
    length_of_stay = np.maximum(1, g.poisson(2.5 + 0.04 * (age - 60).clip(0) + 1.5 * (diagnosis == 1), n))
    logit = -2.6 + 0.025 * (age - 66) + 0.9 * (diagnosis == 1) + 0.6 * (diagnosis == 2) + 0.08 * length_of_stay
    readmitted = g.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({
        "pseudonym": pseudonyms,
        "age_band": [f"{a // 5 * 5}-{a // 5 * 5 + 4}" for a in age],
        "sex": np.where(female, "F", "M"),
        "postcode_area": g.choice(["10", "11", "35", "52", "65", "97"], size=n),
        "admission_date": admitted.strftime("%Y-%m-%d"),
        "diagnosis_group": [DIAGNOSIS_GROUPS[d] for d in diagnosis],
        "length_of_stay_days": length_of_stay,
        "readmitted_30d": readmitted.astype(int),
    })


# ---------------------------------------------------------------- data sets shipped with scikit-learn


def sklearn_bundled(name: str) -> pd.DataFrame:
    """A data set bundled with scikit-learn (installed files, no download), features and target."""
    from sklearn import datasets

    loaders = {"iris": datasets.load_iris, "wine": datasets.load_wine,
               "breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}
    return loaders[name](as_frame=True).frame


GENERATORS = {
    "chest_pain_cohort": chest_pain_cohort,
    "energy_load_series": energy_load_series,
    "pseudonymised_admissions": pseudonymised_admissions,
    "sklearn_bundled": sklearn_bundled,
}


if set(GENERATORS) != registry.GENERATORS:
    raise ImportError(f"aifactory.data.registry.GENERATORS names {sorted(registry.GENERATORS)}, "
                      f"the generators are {sorted(GENERATORS)}")


def to_csv_bytes(frame: pd.DataFrame, index_column: str = "") -> bytes:
    """The published bytes of a frame: CSV, '\\n' line ends, shortest exact float repr."""
    return frame.to_csv(index=bool(index_column), lineterminator="\n").encode()


def build(generator: str, parameters: dict, index_column: str = "") -> bytes:
    return to_csv_bytes(GENERATORS[generator](**parameters), index_column)
