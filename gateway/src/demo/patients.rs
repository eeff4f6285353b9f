//! Synthetic patients whose identifiers the demo plants in HL7 messages (and, for the
//! imaging path, in a CT image's header: [`ImagingStudy`]), and the list of those
//! identifiers the leak check looks for.
//!
//! Invariants:
//! - Every value is invented. Phone numbers are in the 555-01xx range reserved for
//!   fiction, SSNs start with 9 and have a group of 40–49 (never issued as SSNs or
//!   ITINs), e-mail addresses use `example.org`, cities and hospitals do not exist, and
//!   the UID root ([`DEMO_UID_ROOT`]) is made up.
//! - Patients are a pure function of their index: the same index always yields the same
//!   patient, different indices yield different MRNs, SSNs and phone numbers.
//! - Every identifier is distinctive enough that finding it in the cloud's data means it
//!   was copied there, not that it occurred by chance: names have at least five letters
//!   and are not hex words; numbers have at least eight digits, except short ones
//!   (5-digit ZIP, 7-digit local number) which only count as a leak when they stand
//!   alone as a token ([`PlantedIdentifier::whole_token`]).

use std::fmt::Write as _;

/// What kind of identifier a planted value is (HIPAA Safe Harbor categories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierKind {
    /// A person's name (patient, relative).
    Name,
    /// A clinician's name (not patient PHI, but treated as sensitive).
    ClinicianName,
    /// Street address, city or ZIP code.
    Address,
    /// A date tied to the patient (birth, admission).
    Date,
    /// Telephone number.
    Phone,
    /// E-mail address.
    Email,
    /// Social Security number.
    Ssn,
    /// Medical record, account or visit number.
    RecordNumber,
    /// Driver's licence number.
    Licence,
    /// Free text from a note.
    FreeText,
    /// The name of the hospital (DICOM InstitutionName): with a patient's other data it
    /// narrows down who they are.
    Institution,
    /// A DICOM UID under the hospital's own root: it tells where an image was made, and
    /// modalities often build UIDs from accession numbers and dates.
    Uid,
}

impl IdentifierKind {
    /// A short label for reports.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            IdentifierKind::Name => "name",
            IdentifierKind::ClinicianName => "clinician name",
            IdentifierKind::Address => "address",
            IdentifierKind::Date => "date",
            IdentifierKind::Phone => "phone",
            IdentifierKind::Email => "e-mail",
            IdentifierKind::Ssn => "SSN",
            IdentifierKind::RecordNumber => "record number",
            IdentifierKind::Licence => "licence",
            IdentifierKind::FreeText => "free text",
            IdentifierKind::Institution => "institution",
            IdentifierKind::Uid => "UID",
        }
    }
}

/// One value planted in the HL7 messages that must never reach the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantedIdentifier {
    /// Its category.
    pub kind: IdentifierKind,
    /// The exact text (ASCII).
    pub value: String,
    /// If set, it only counts where it is not adjacent to another letter or digit
    /// (short numbers occur inside longer ones by chance).
    pub whole_token: bool,
    /// A derived form (e.g. digits only) that the HL7 does not carry verbatim but a
    /// careless transformation could produce; the rest are on the wire as written.
    pub variant: bool,
}

impl PlantedIdentifier {
    /// An identifier of `kind`; whether it must be a whole token follows from its form.
    #[must_use]
    pub fn new(kind: IdentifierKind, value: String, variant: bool) -> Self {
        let digits_only = value.chars().all(|c| c.is_ascii_digit());
        // Short names ("Leo", "Holt") and short numbers (5-digit ZIP, 7-digit local
        // number) occur inside longer words and numbers by chance: whole tokens only.
        let whole_token = value.len() < 5 || (digits_only && value.len() < 8);
        PlantedIdentifier {
            kind,
            value,
            whole_token,
            variant,
        }
    }
}

/// A date without time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    /// Year.
    pub year: u16,
    /// Month, 1–12.
    pub month: u8,
    /// Day of month, 1–31.
    pub day: u8,
}

impl Date {
    /// The civil (proleptic Gregorian) date `days` days after 1970-01-01, for years
    /// 1970–9999; `None` outside.
    #[must_use]
    pub fn from_days_since_epoch(days: i64) -> Option<Date> {
        // Howard Hinnant's civil_from_days.
        let z = days.checked_add(719_468)?;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Some(Date {
            year: u16::try_from(year)
                .ok()
                .filter(|y| (1970..=9999).contains(y))?,
            month: u8::try_from(month).ok()?,
            day: u8::try_from(day).ok()?,
        })
    }

    /// `YYYYMMDD`, as HL7 writes dates.
    #[must_use]
    pub fn hl7(self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `YYYY-MM-DD`.
    #[must_use]
    pub fn iso(self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A telephone number in the North American 555-01xx fiction range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    /// Area code, 3 digits.
    pub area: String,
    /// Local number, 7 digits (`555` + `01xx`).
    pub local: String,
}

impl Phone {
    /// `(415)555-0143`, the HL7 XTN-1 form.
    #[must_use]
    pub fn display(&self) -> String {
        format!("({}){}-{}", self.area, &self.local[..3], &self.local[3..])
    }

    /// HL7 v2.6 XTN: legacy text, use code, equipment type, country, area, local.
    #[must_use]
    pub fn xtn(&self, use_code: &str) -> String {
        format!(
            "{}^{use_code}^PH^^1^{}^{}",
            self.display(),
            self.area,
            self.local
        )
    }
}

/// A person related to the patient (HL7 NK1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextOfKin {
    /// Family name.
    pub family: String,
    /// Given name.
    pub given: String,
    /// HL7 table 0063 code and text.
    pub relationship: (&'static str, &'static str),
    /// Telephone.
    pub phone: Phone,
}

/// A synthetic patient with every identifier the demo plants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticPatient {
    /// Family name.
    pub family: String,
    /// Given name.
    pub given: String,
    /// Middle name.
    pub middle: String,
    /// Nickname used in the free-text note.
    pub nickname: String,
    /// Mother's maiden name (PID-6).
    pub mother_maiden: String,
    /// Birth date (PID-7).
    pub birth_date: Date,
    /// Administrative sex (PID-8).
    pub sex: char,
    /// Street line (PID-11.1).
    pub street: String,
    /// City (PID-11.3).
    pub city: String,
    /// State (PID-11.4; state is not a Safe Harbor identifier, so it is not checked).
    pub state: &'static str,
    /// ZIP+4 (PID-11.5).
    pub zip: String,
    /// Home phone (PID-13).
    pub home_phone: Phone,
    /// Work phone (PID-14).
    pub work_phone: Phone,
    /// E-mail (PID-13 repetition).
    pub email: String,
    /// Medical record number (PID-3, type MR).
    pub mrn: String,
    /// Account number (PID-18).
    pub account: String,
    /// SSN (PID-19), `9XX-4X-XXXX`.
    pub ssn: String,
    /// Driver's licence (PID-20).
    pub licence: String,
    /// Visit number (PV1-19).
    pub visit: String,
    /// Admission time (PV1-44), `YYYYMMDDHHMMSS`.
    pub admitted: String,
    /// Attending clinician (PV1-7): id, family, given.
    pub attending: (String, String, String),
    /// Next of kin (NK1).
    pub next_of_kin: NextOfKin,
    /// A nurse's note (NTE-3).
    pub note: String,
}

/// The assigning authority of the demo hospital's MRNs.
pub const ASSIGNING_AUTHORITY: &str = "WARDGATE-DEMO";

const FAMILY: [&str; 16] = [
    "Quennell",
    "Abernathy",
    "Vandersloot",
    "Okonkwo-Barrett",
    "Lindqvist",
    "Marchetti",
    "Fairweather",
    "Szczepanski",
    "Achterberg",
    "Ravensworth",
    "Delacroix-Finch",
    "Nakamura-Holt",
    "Oyelaran",
    "Whitlock",
    "Castellanos",
    "Brannigan",
];
const GIVEN: [&str; 16] = [
    "Ottoline",
    "Cassius",
    "Philippa",
    "Ifeoma",
    "Thorvald",
    "Giuliana",
    "Leopold",
    "Marisol",
    "Evander",
    "Rosalind",
    "Kwabena",
    "Annelise",
    "Tobias",
    "Saoirse",
    "Ignatius",
    "Persephone",
];
const MIDDLE: [&str; 8] = [
    "Juniper",
    "Barnaby",
    "Winslow",
    "Clementine",
    "Horatio",
    "Marguerite",
    "Lysander",
    "Imogen",
];
const NICKNAMES: [&str; 8] = [
    "Lottie", "Cash", "Pippa", "Ifey", "Thor", "Giugi", "Leo", "Mari",
];
const MAIDEN: [&str; 8] = [
    "Hollingsworth",
    "Pemberton",
    "Ashcombe",
    "Tremayne",
    "Kittredge",
    "Blakemore",
    "Wetherby",
    "Harcastle",
];
const KIN_GIVEN: [&str; 8] = [
    "Barnaby",
    "Sofiya",
    "Augustin",
    "Wilhelmina",
    "Cornelius",
    "Dorothea",
    "Ezekiel",
    "Henrietta",
];
const STREETS: [&str; 8] = [
    "Larkspur Hollow Rd",
    "Tamarind Crescent",
    "Old Quarry Lane",
    "Wicklow Terrace",
    "Marrowgate Street",
    "Juniper Bluff Ave",
    "Coldharbour Mews",
    "Saltmarsh Drive",
];
const CITIES: [&str; 8] = [
    "Port Wendeline",
    "East Marrowby",
    "Caddisford",
    "Lower Shelburne",
    "Fennimore Springs",
    "Oakhaven Ridge",
    "Thistlecombe",
    "New Argyllton",
];
const STATES: [&str; 4] = ["CA", "OR", "WA", "NV"];
const AREA_CODES: [&str; 4] = ["415", "503", "206", "775"];
const ATTENDING: [(&str, &str); 4] = [
    ("Harrowgate", "Winifred"),
    ("Okonjo-Lisle", "Bartholomew"),
    ("Featherstonehaugh", "Maren"),
    ("Quist", "Ambrose"),
];
const RELATIONSHIPS: [(&str, &str); 4] = [
    ("SPO", "Spouse"),
    ("CHD", "Child"),
    ("SIB", "Sibling"),
    ("PAR", "Parent"),
];

impl SyntheticPatient {
    /// The patient for monitor `index` (0-based). `today` (days since 1970-01-01)
    /// anchors the admission date three to six days back.
    #[must_use]
    pub fn new(index: usize, today: i64) -> Self {
        // Small mixing so neighbouring indices do not share every pool entry.
        let i = index;
        let pick = |len: usize, mul: usize, add: usize| (i * mul + add) % len;
        let family = FAMILY[i % FAMILY.len()].to_owned();
        let given = GIVEN[pick(GIVEN.len(), 7, i / GIVEN.len())].to_owned();
        let serial = u32::try_from(i % 1000).unwrap_or(0);
        let phone = |slot: u32| Phone {
            area: AREA_CODES[pick(AREA_CODES.len(), 3, slot as usize)].to_owned(),
            // 555-0100..555-0199: 100 numbers, 3 per patient, so unique for 33 patients and
            // plausible beyond.
            local: format!("55501{:02}", (serial * 3 + slot) % 100),
        };
        let mrn = format!("4{:07}", 718_352 + serial * 7_919);
        let ssn_digits = 900 + (serial * 37) % 100;
        let state = STATES[pick(STATES.len(), 1, 0)];
        let street = format!(
            "{} {}",
            100 + (serial * 37) % 900,
            STREETS[pick(STREETS.len(), 5, 1)]
        );
        let city = CITIES[pick(CITIES.len(), 3, 2)].to_owned();
        let zip = format!(
            "9{:04}-{:04}",
            (4117 + serial * 13) % 10_000,
            (2231 + serial * 7) % 10_000
        );
        let birth_date = Date {
            year: 1938 + u16::try_from((i * 13) % 58).unwrap_or(0),
            month: 1 + u8::try_from((i * 5) % 12).unwrap_or(0),
            day: 1 + u8::try_from((i * 11) % 28).unwrap_or(0),
        };
        let admission = i64::try_from(3 + i % 4)
            .ok()
            .and_then(|back| Date::from_days_since_epoch(today - back));
        let admission = admission.unwrap_or(Date {
            year: 2025,
            month: 1,
            day: 1,
        });
        let admitted = format!(
            "{}{:02}{:02}00",
            admission.hl7(),
            7 + (i * 5) % 12,
            (i * 17) % 60
        );
        let (att_family, att_given) = ATTENDING[i % ATTENDING.len()];
        let kin_phone = phone(2);
        let home_phone = phone(0);
        let nickname = NICKNAMES[i % NICKNAMES.len()].to_owned();
        let kin_given = KIN_GIVEN[pick(KIN_GIVEN.len(), 3, 0)].to_owned();
        let note = format!(
            "Pt {given} {family} prefers {nickname}; call {kin_given} at {} before procedures",
            kin_phone.display()
        );
        SyntheticPatient {
            middle: MIDDLE[pick(MIDDLE.len(), 5, 3)].to_owned(),
            nickname,
            mother_maiden: MAIDEN[pick(MAIDEN.len(), 3, 1)].to_owned(),
            birth_date,
            sex: if i % 2 == 0 { 'F' } else { 'M' },
            street,
            city,
            state,
            zip,
            work_phone: phone(1),
            email: format!(
                "{}.{}@example.org",
                given.to_ascii_lowercase(),
                family.to_ascii_lowercase()
            ),
            mrn,
            account: format!("73{:08}", (1_948_826 + serial * 104_729) % 100_000_000),
            ssn: format!(
                "{ssn_digits:03}-4{}-{:04}",
                serial % 10,
                1120 + (serial * 97) % 8000
            ),
            licence: format!("D{:08}", 44_719_230 + serial * 3_331),
            visit: format!("VN{:08}", 20_250_614 + serial * 1_013),
            admitted,
            attending: (
                format!("7{:04}", 412 + serial),
                att_family.to_owned(),
                att_given.to_owned(),
            ),
            next_of_kin: NextOfKin {
                family: family.clone(),
                given: kin_given,
                relationship: RELATIONSHIPS[i % RELATIONSHIPS.len()],
                phone: kin_phone,
            },
            note,
            home_phone,
            family,
            given,
        }
    }

    /// Every identifier planted for this patient: the forms the HL7 messages carry, plus
    /// the variants a careless transformation might produce (digits only, ISO dates,
    /// dashed phone numbers), marked [`PlantedIdentifier::variant`].
    #[must_use]
    pub fn planted_identifiers(&self) -> Vec<PlantedIdentifier> {
        use IdentifierKind as K;
        let mut out: Vec<PlantedIdentifier> = Vec::new();
        let mut add = |kind, value: String, variant| {
            if out.iter().any(|p| p.value.eq_ignore_ascii_case(&value)) {
                return;
            }
            out.push(PlantedIdentifier::new(kind, value, variant));
        };
        let names = self.family.split('-').chain(
            [
                &self.given,
                &self.middle,
                &self.mother_maiden,
                &self.nickname,
                &self.next_of_kin.given,
            ]
            .map(String::as_str),
        );
        for name in names {
            add(K::Name, name.to_owned(), false);
        }
        for name in self
            .attending
            .1
            .split('-')
            .chain(std::iter::once(self.attending.2.as_str()))
        {
            add(K::ClinicianName, name.to_owned(), false);
        }
        add(K::Address, self.street.clone(), false);
        add(K::Address, self.city.clone(), false);
        add(K::Address, self.zip.clone(), false);
        add(K::Address, self.zip[..5].to_owned(), false);
        add(K::Address, self.zip.replace('-', ""), true);
        add(K::Date, self.birth_date.hl7(), false);
        add(K::Date, self.birth_date.iso(), true);
        add(K::Date, self.admitted.clone(), false);
        for phone in [&self.home_phone, &self.work_phone, &self.next_of_kin.phone] {
            add(K::Phone, phone.display(), false);
            add(K::Phone, phone.local.clone(), false);
            add(K::Phone, format!("{}{}", phone.area, phone.local), true);
            add(
                K::Phone,
                format!("{}-{}-{}", phone.area, &phone.local[..3], &phone.local[3..]),
                true,
            );
        }
        add(K::Email, self.email.clone(), false);
        add(K::Ssn, self.ssn.clone(), false);
        add(K::Ssn, self.ssn.replace('-', ""), true);
        add(K::RecordNumber, self.mrn.clone(), false);
        add(K::RecordNumber, self.account.clone(), false);
        add(K::RecordNumber, self.visit.clone(), false);
        add(K::Licence, self.licence.clone(), false);
        add(K::FreeText, self.note.clone(), false);
        out
    }

    /// The HL7 PID segment carrying every patient identifier.
    #[must_use]
    pub fn pid_segment(&self) -> String {
        segment(
            "PID",
            &[
                (1, "1".to_owned()),
                (3, format!("{}^^^{ASSIGNING_AUTHORITY}^MR", self.mrn)),
                (
                    5,
                    format!("{}^{}^{}^^^^L", self.family, self.given, self.middle),
                ),
                (6, self.mother_maiden.clone()),
                (7, self.birth_date.hl7()),
                (8, self.sex.to_string()),
                (
                    11,
                    format!(
                        "{}^^{}^{}^{}^USA^H",
                        self.street, self.city, self.state, self.zip
                    ),
                ),
                (
                    13,
                    format!(
                        "{}~^NET^Internet^{}",
                        self.home_phone.xtn("PRN"),
                        self.email
                    ),
                ),
                (14, self.work_phone.xtn("WPN")),
                (18, format!("{}^^^{ASSIGNING_AUTHORITY}^AN", self.account)),
                (19, self.ssn.clone()),
                (20, format!("{}^{}", self.licence, self.state)),
            ],
        )
    }

    /// A patient note (NTE after PID).
    #[must_use]
    pub fn nte_segment(&self) -> String {
        segment(
            "NTE",
            &[
                (1, "1".to_owned()),
                (2, "L".to_owned()),
                (3, self.note.clone()),
            ],
        )
    }

    /// Next of kin (NK1).
    #[must_use]
    pub fn nk1_segment(&self) -> String {
        let kin = &self.next_of_kin;
        segment(
            "NK1",
            &[
                (1, "1".to_owned()),
                (2, format!("{}^{}", kin.family, kin.given)),
                (
                    3,
                    format!("{}^{}^HL70063", kin.relationship.0, kin.relationship.1),
                ),
                (
                    4,
                    format!(
                        "{}^^{}^{}^{}^USA^H",
                        self.street, self.city, self.state, self.zip
                    ),
                ),
                (5, kin.phone.xtn("PRN")),
            ],
        )
    }

    /// The visit (PV1): bed location, attending clinician, visit number, admission time.
    #[must_use]
    pub fn pv1_segment(&self, bed: &str) -> String {
        segment(
            "PV1",
            &[
                (1, "1".to_owned()),
                (2, "I".to_owned()),
                (3, format!("ICU^{bed}^1^{ASSIGNING_AUTHORITY}")),
                (
                    7,
                    format!(
                        "{}^{}^{}^^^Dr",
                        self.attending.0, self.attending.1, self.attending.2
                    ),
                ),
                (19, format!("{}^^^{ASSIGNING_AUTHORITY}^VN", self.visit)),
                (44, self.admitted.clone()),
            ],
        )
    }
}

/// The root of every UID the demo hospital's modalities create. Made up for the demo;
/// like a real site's root it names the organisation that made an image, so it must not
/// leave the hospital.
pub const DEMO_UID_ROOT: &str = "1.3.6.1.4.1.99999.7247";

const INSTITUTIONS: [&str; 4] = [
    "Hollowmere General Hospital",
    "Saint Ebbawyn Infirmary",
    "Quarrendon Vale Medical Centre",
    "Blackthorne Ridge Hospital",
];

/// A CT study of a synthetic patient: what a modality writes into an image's header
/// besides the patient's own identifiers (name, MRN, birth date and the referring
/// physician come from [`SyntheticPatient`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagingStudy {
    /// InstitutionName (0008,0080).
    pub institution: String,
    /// AccessionNumber (0008,0050): `A` and nine digits.
    pub accession: String,
    /// StudyDate (0008,0020): a week or more before the demo runs (so no timestamp of the
    /// run can contain it by chance).
    pub study_date: Date,
    /// StudyTime (0008,0030), `HHMMSS`.
    pub study_time: String,
}

impl ImagingStudy {
    /// The study of patient `index` (as [`SyntheticPatient::new`]); `today` (days since
    /// 1970-01-01) anchors the study date seven to eleven days back.
    #[must_use]
    pub fn new(index: usize, today: i64) -> Self {
        let serial = u32::try_from(index % 1000).unwrap_or(0);
        let back = i64::try_from(7 + index % 5).unwrap_or(7);
        let study_date = Date::from_days_since_epoch(today - back).unwrap_or(Date {
            year: 2025,
            month: 1,
            day: 2,
        });
        ImagingStudy {
            institution: INSTITUTIONS[index % INSTITUTIONS.len()].to_owned(),
            accession: format!("A{:09}", 310_427_113 + serial * 7_717),
            study_date,
            study_time: format!("{:02}{:02}00", 8 + index % 9, (index * 23) % 60),
        }
    }

    /// The accession number's digits, which the UIDs carry.
    fn accession_digits(&self) -> &str {
        self.accession.trim_start_matches('A')
    }

    /// StudyInstanceUID: the root, the accession number and the study date, as many
    /// modalities build them.
    #[must_use]
    pub fn study_instance_uid(&self) -> String {
        format!(
            "{DEMO_UID_ROOT}.1.{}.{}",
            self.accession_digits(),
            self.study_date.hl7()
        )
    }

    /// SeriesInstanceUID of the study's one series.
    #[must_use]
    pub fn series_instance_uid(&self) -> String {
        format!("{DEMO_UID_ROOT}.2.{}.1", self.accession_digits())
    }

    /// SOPInstanceUID of the series' one image.
    #[must_use]
    pub fn sop_instance_uid(&self) -> String {
        format!("{DEMO_UID_ROOT}.3.{}.1.1", self.accession_digits())
    }

    /// FrameOfReferenceUID of the series.
    #[must_use]
    pub fn frame_of_reference_uid(&self) -> String {
        format!("{DEMO_UID_ROOT}.4.{}", self.accession_digits())
    }

    /// The identifiers the study adds to its patient's: institution, accession number
    /// (also its digits alone, as a UID carries them), study date (also ISO, a variant)
    /// and the UID root (found in any UID that was not replaced).
    #[must_use]
    pub fn planted_identifiers(&self) -> Vec<PlantedIdentifier> {
        use IdentifierKind as K;
        vec![
            PlantedIdentifier::new(K::Institution, self.institution.clone(), false),
            PlantedIdentifier::new(K::RecordNumber, self.accession.clone(), false),
            PlantedIdentifier::new(K::RecordNumber, self.accession_digits().to_owned(), true),
            PlantedIdentifier::new(K::Date, self.study_date.hl7(), false),
            PlantedIdentifier::new(K::Date, self.study_date.iso(), true),
            PlantedIdentifier::new(K::Uid, DEMO_UID_ROOT.to_owned(), false),
        ]
    }
}

/// Builds `NAME|f1|f2|…` with the given fields at their 1-based positions.
#[must_use]
pub fn segment(name: &str, fields: &[(usize, String)]) -> String {
    let last = fields.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let mut out = String::from(name);
    for position in 1..=last {
        out.push('|');
        if let Some((_, value)) = fields.iter().find(|(i, _)| *i == position) {
            let _ = write!(out, "{value}");
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    /// 2025-06-20.
    const TODAY: i64 = 20_259;

    #[test]
    fn civil_dates() {
        assert_eq!(
            Date::from_days_since_epoch(0),
            Some(Date {
                year: 1970,
                month: 1,
                day: 1
            })
        );
        assert_eq!(
            Date::from_days_since_epoch(TODAY),
            Some(Date {
                year: 2025,
                month: 6,
                day: 20
            })
        );
        assert_eq!(
            Date::from_days_since_epoch(11_016),
            Some(Date {
                year: 2000,
                month: 2,
                day: 29
            })
        );
        assert_eq!(Date::from_days_since_epoch(-1), None);
        assert_eq!(Date::from_days_since_epoch(i64::MAX / 2), None);
    }

    #[test]
    fn patients_are_deterministic_and_distinct() {
        assert_eq!(
            SyntheticPatient::new(3, TODAY),
            SyntheticPatient::new(3, TODAY)
        );
        let patients: Vec<_> = (0..64).map(|i| SyntheticPatient::new(i, TODAY)).collect();
        for (a, pa) in patients.iter().enumerate() {
            for pb in &patients[a + 1..] {
                assert_ne!(pa.mrn, pb.mrn);
                assert_ne!(pa.ssn, pb.ssn);
                assert_ne!((&pa.family, &pa.given), (&pb.family, &pb.given));
            }
        }
    }

    #[test]
    fn identifiers_are_distinctive() {
        let hexish = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
        for i in 0..64 {
            let p = SyntheticPatient::new(i, TODAY);
            assert!(p.ssn.starts_with('9') && p.ssn[4..5] == *"4", "{}", p.ssn);
            assert!(p.home_phone.local.starts_with("55501"));
            for id in p
                .planted_identifiers()
                .into_iter()
                .chain(ImagingStudy::new(i, TODAY).planted_identifiers())
            {
                assert!(id.value.is_ascii(), "{id:?}");
                if !id.whole_token {
                    assert!(id.value.len() >= 5, "{id:?}");
                    let digits = id.value.chars().filter(char::is_ascii_digit).count();
                    assert!(digits == 0 || digits >= 8 || id.value.len() >= 12, "{id:?}");
                    if digits == 0 {
                        assert!(!hexish(&id.value), "{id:?} could occur in hex by chance");
                    }
                }
            }
        }
    }

    #[test]
    fn imaging_study_uids_are_valid_and_carry_the_planted_root() {
        for i in 0..64 {
            let study = ImagingStudy::new(i, TODAY);
            assert!(study.study_date.hl7().as_str() < "20250614", "{study:?}");
            for uid in [
                study.study_instance_uid(),
                study.series_instance_uid(),
                study.sop_instance_uid(),
                study.frame_of_reference_uid(),
            ] {
                assert!(uid.len() <= 64 && uid.starts_with(DEMO_UID_ROOT), "{uid}");
                assert!(
                    uid.split('.')
                        .all(|c| !c.is_empty() && (c == "0" || !c.starts_with('0'))),
                    "{uid}: components must not have leading zeros"
                );
            }
        }
        assert_ne!(
            ImagingStudy::new(0, TODAY).accession,
            ImagingStudy::new(1, TODAY).accession
        );
    }

    #[test]
    fn segments_place_fields_at_their_positions() {
        let p = SyntheticPatient::new(0, TODAY);
        let pid = p.pid_segment();
        let fields: Vec<&str> = pid.split('|').collect();
        assert_eq!(fields[0], "PID");
        assert_eq!(fields[3], format!("{}^^^WARDGATE-DEMO^MR", p.mrn));
        assert!(fields[5].starts_with(&p.family));
        assert_eq!(fields[7], p.birth_date.hl7());
        assert_eq!(fields[19], p.ssn);
        assert!(fields[20].starts_with(&p.licence));
        let pv1 = p.pv1_segment("7");
        let fields: Vec<&str> = pv1.split('|').collect();
        assert!(fields[19].starts_with(&p.visit));
        assert_eq!(fields[44], p.admitted);
    }
}
