//! Synthetic HL7 messages. Every value is invented. The PHI fixtures plant a distinct,
//! greppable identifier in every HIPAA Safe Harbor field HL7 carries (see
//! shared/notes/domain.md), so a test can assert none of them appears anywhere.

/// Identifiers planted in one synthetic patient's message. Each value is unique enough
/// that finding it in a payload or a file is proof of a leak.
#[derive(Debug, Clone)]
pub struct Planted {
    /// PID-3 medical record number (type MR).
    pub mrn: String,
    /// PID-2 / PID-4 alternate ids, PID-18 account, PV1-19 visit number, IN1 policy numbers.
    pub other_ids: Vec<String>,
    /// PID-5/6/9, NK1-2, GT1-3, IN1-16 names and PV1 clinicians.
    pub names: Vec<String>,
    /// PID-7 birth date, PID-29 death date, PV1-44/45 admit/discharge, GT1-8, IN1-18.
    pub dates: Vec<String>,
    /// PID-11/12, NK1-4, GT1-5, IN1-19 address parts.
    pub places: Vec<String>,
    /// PID-13/14, NK1-5/6, GT1-6/7 phones and e-mail.
    pub contacts: Vec<String>,
    /// PID-19 / GT1-12 SSNs, PID-20 licence, PID-21 mother's id.
    pub numbers: Vec<String>,
    /// NTE-3 and OBX-5 free text.
    pub free_text: Vec<String>,
}

impl Planted {
    /// A patient whose every identifier carries `tag` (digits or letters) so patients differ.
    #[must_use]
    pub fn patient(tag: u32) -> Planted {
        Planted {
            mrn: format!("MRN7{tag:05}31"),
            other_ids: vec![
                format!("ALTID{tag}X2"),
                format!("EXTID{tag}X4"),
                format!("ACCT{tag}X18"),
                format!("VISIT{tag}X19"),
                format!("POLICY{tag}X36"),
                format!("PLAN{tag}X49"),
            ],
            names: vec![
                format!("Zyxfam{tag}"),
                format!("Zyxgiven{tag}"),
                format!("Maidenq{tag}"),
                format!("Aliasq{tag}"),
                format!("Kinname{tag}"),
                format!("Guarname{tag}"),
                format!("Insuredq{tag}"),
                format!("Drattend{tag}"),
                format!("Drrefer{tag}"),
                format!("Drconsult{tag}"),
                format!("Dradmit{tag}"),
            ],
            dates: vec![
                format!("1931{:04}", 101 + tag % 800),
                "20240229".to_owned(),
                "20240301083000".to_owned(),
                "20240305170000".to_owned(),
                "19550707".to_owned(),
                "19600808".to_owned(),
            ],
            places: vec![
                format!("{tag} Quillstreet Lane"),
                format!("Townq{tag}"),
                "99501-0042".to_owned(),
                format!("Countyq{tag}"),
                format!("{tag} Kinstreet Road"),
                format!("{tag} Guarstreet Ave"),
                format!("{tag} Insstreet Blvd"),
            ],
            contacts: vec![
                format!("(555)01{:02}-3847", tag % 100),
                format!("(555)02{:02}-9911", tag % 100),
                format!("zyx{tag}@mail.example"),
                format!("(555)03{:02}-4455", tag % 100),
                format!("(555)04{:02}-7788", tag % 100),
                format!("(555)05{:02}-1212", tag % 100),
            ],
            numbers: vec![
                format!("9{:02}-41-{:04}", tag % 100, 1000 + tag % 9000),
                format!("LIC{tag}X20"),
                format!("MOTHER{tag}X21"),
                format!("8{:02}-52-{:04}", tag % 100, 2000 + tag % 7000),
            ],
            free_text: vec![
                format!("Note on Zyxfam{tag} from family"),
                format!("Patient Zyxgiven{tag} said hello"),
            ],
        }
    }

    /// Every planted value, for leak assertions.
    #[must_use]
    pub fn all(&self) -> Vec<String> {
        let mut v = vec![self.mrn.clone()];
        for list in [
            &self.other_ids,
            &self.names,
            &self.dates,
            &self.places,
            &self.contacts,
            &self.numbers,
            &self.free_text,
        ] {
            v.extend(list.iter().cloned());
        }
        v
    }
}

/// An IHE PCD-01 ORU^R01 from device `eui64` (MSH-3) with control id `control_id`,
/// carrying `planted` in every Safe Harbor field and `spo2` as the SpO2 value.
#[must_use]
pub fn pcd01_with_phi(eui64: &str, control_id: &str, p: &Planted, spo2: u32) -> String {
    let n = &p.names;
    let d = &p.dates;
    let a = &p.places;
    let c = &p.contacts;
    let o = &p.other_ids;
    let s = &p.numbers;
    [
        format!("MSH|^~\\&|MONITOR^{eui64}^EUI-64|WARD 7|||20250101120000||ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"),
        format!(
            "PID|1|{alt}|{mrn}^^^HOSP^MR~{acct2}^^^HOSP^AN|{ext}|{fam}^{given}^Q||{dob}|F|{alias}^X|2106-3|{street}^^{town}^CA^{zip}^USA^H^^{county}|{county}|{ph}^PRN^PH~^NET^Internet^{email}|{ph2}^WPN^PH|en|M|CHR|{acct}|{ssn}|{lic}^CA|{mother}||||||||{dod}|Y",
            alt = o[0], mrn = p.mrn, acct2 = o[2], ext = o[1], fam = n[0], given = n[1], dob = d[0], alias = n[3],
            street = a[0], town = a[1], zip = a[2], county = a[3], ph = c[0], email = c[2], ph2 = c[1], acct = o[2],
            ssn = s[0], lic = s[1], mother = s[2], dod = d[1],
        ),
        format!("PD1||||{}", n[8]),
        format!(
            "NK1|1|{kin}^Pat|MTH^Mother|{kstreet}^^{town}^CA|{kph}|{kph2}",
            kin = n[4], kstreet = a[4], town = a[1], kph = c[3], kph2 = c[4]
        ),
        format!(
            "PV1|1|I|ICU^7^1||||{att}^Att^A|{refer}^Ref^R|{consult}^Con^C||||||||{admit}^Adm^A||{visit}|||||||||||||||||||||||||{adm}|{dis}",
            att = n[7], refer = n[8], consult = n[9], admit = n[10], visit = o[3], adm = d[2], dis = d[3]
        ),
        format!(
            "GT1|1||{guar}^G||{gstreet}^^{town}^CA|{gph}|{gph2}|{gdob}||||{gssn}",
            guar = n[5], gstreet = a[5], town = a[1], gph = c[5], gph2 = c[5], gdob = d[4], gssn = s[3]
        ),
        format!(
            "IN1|1|PLAN1|INSCO1|Insurer||||||||||||{insd}^I|SEL|{idob}|{istreet}^^{town}^CA|||||||||||||||||{pol}|||||||||||||{plan}",
            insd = n[6], idob = d[5], istreet = a[6], town = a[1], pol = o[4], plan = o[5]
        ),
        format!("NTE|1||{}", p.free_text[0]),
        format!("OBR|1|{control_id}^MONITOR^{eui64}^EUI-64|{control_id}^MONITOR^{eui64}^EUI-64|182777000^monitoring of patient^SCT|||20250101120000"),
        format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui64}^EUI-64"),
        format!("OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|{spo2}|262688^MDC_DIM_PERCENT^MDC|||||R|||20250101120000||||{eui64}^EUI-64"),
        "OBX|3|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.3.1.149530|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20250101120000".to_owned(),
        format!("OBX|4|ST|0^MDC_NOTE^MDC|1.0.0.1|{}||||||R", p.free_text[1]),
        format!("NTE|2||{} called {}", n[0], c[0]),
    ]
    .join("\r")
}

/// An IHE PCD-04 ORU^R40 alarm from device `eui64` with a planted patient.
#[must_use]
pub fn pcd04_with_phi(eui64: &str, control_id: &str, p: &Planted) -> String {
    [
        format!("MSH|^~\\&|MONITOR^{eui64}^EUI-64|WARD 7|||20250101120005||ORU^R40^ORU_R40|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_004^IHE PCD^1.3.6.1.4.1.19376.1.6.1.4.1^ISO"),
        format!("PID|||{}^^^HOSP^MR||{}^{}||{}", p.mrn, p.names[0], p.names[1], p.dates[0]),
        format!("OBR|1|{control_id}^MONITOR^{eui64}^EUI-64||196616^MDC_EVT_ALARM^MDC|||20250101120005"),
        "OBX|1|CWE|196616^MDC_EVT_ALARM^MDC|1.3.1.150456.1|196652^MDC_EVT_LO_VAL_LT_LIM^MDC||||||F|||20250101120005".to_owned(),
        "OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456.2|84|262688^MDC_DIM_PERCENT^MDC|90-100||||F|||20250101120005".to_owned(),
        "OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.3.1.150456.3|start||||||F".to_owned(),
        "OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.3.1.150456.4|active||||||F".to_owned(),
    ]
    .join("\r")
}

/// A minimal, PHI-free PCD-01 for load and ordering tests.
#[must_use]
pub fn pcd01_plain(eui64: &str, control_id: &str, spo2: u32) -> String {
    [
        format!("MSH|^~\\&|MONITOR^{eui64}^EUI-64||||20250101120000||ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"),
        "PID|||MRN1^^^HOSP^MR".to_owned(),
        format!("OBR|1|{control_id}^MONITOR^{eui64}^EUI-64||182777000^monitoring of patient^SCT|||20250101120000"),
        format!("OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|{spo2}|262688^MDC_DIM_PERCENT^MDC|||||R|||20250101120000"),
    ]
    .join("\r")
}
