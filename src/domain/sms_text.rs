//! The text of every SMS, pure: the shipped languages, picking one from an
//! `Accept-Language` header, the templates per language and purpose of code
//! SMS and per kind of notice (with the operator's overrides), rendering, the
//! WebOTP line, and how many segments a text costs (GSM-7 or UCS-2).

use std::collections::HashMap;
use std::fmt;

use super::otp::Purpose;

/// A language SMS are shipped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Locale {
    #[default]
    En,
    Es,
    Fr,
    De,
    Pt,
}

impl Locale {
    pub const ALL: [Locale; 5] = [Locale::En, Locale::Es, Locale::Fr, Locale::De, Locale::Pt];

    pub fn as_str(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::Es => "es",
            Locale::Fr => "fr",
            Locale::De => "de",
            Locale::Pt => "pt",
        }
    }

    /// A shipped language by its tag: `es`, or with a region (`es-MX`, `pt_BR`),
    /// any case.
    pub fn parse(tag: &str) -> Option<Locale> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        Locale::ALL.into_iter().find(|l| l.as_str() == primary)
    }

    /// The shipped language an `Accept-Language` header prefers most (highest
    /// q-value, then first listed), or `None` when it names none of them.
    pub fn from_accept_language(header: &str) -> Option<Locale> {
        let mut best: Option<(u16, Locale)> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim();
            let mut q = 1000u16;
            for p in parts {
                let p = p.trim();
                if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                    q = parse_q(v).unwrap_or(0);
                }
            }
            if q == 0 {
                continue;
            }
            if let Some(l) = Locale::parse(tag) {
                if best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, l));
                }
            }
        }
        best.map(|(_, l)| l)
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A q-value in thousandths (`0.9` → 900); malformed → `None`.
fn parse_q(v: &str) -> Option<u16> {
    let f: f64 = v.trim().parse().ok()?;
    if (0.0..=1.0).contains(&f) {
        // In range 0..=1000, so the cast is exact enough.
        Some((f * 1000.0).round() as u16)
    } else {
        None
    }
}

/// What the shipped text says the code is for.
pub fn action(locale: Locale, purpose: Purpose) -> &'static str {
    use Purpose::*;
    match (locale, purpose) {
        (Locale::En, PhoneVerify) => "verify your phone",
        (Locale::En, Login2fa) => "sign in",
        (Locale::En, Enable2fa) => "turn on two-factor authentication",
        (Locale::En, Disable2fa) => "turn off two-factor authentication",
        (Locale::En, PhoneChange) => "make this your account's phone number",
        (Locale::En, PasswordReset) => "reset your password",
        (Locale::Es, PhoneVerify) => "verificar tu teléfono",
        (Locale::Es, Login2fa) => "iniciar sesión",
        (Locale::Es, Enable2fa) => "activar la verificación en dos pasos",
        (Locale::Es, Disable2fa) => "desactivar la verificación en dos pasos",
        (Locale::Es, PhoneChange) => "usar este número en tu cuenta",
        (Locale::Es, PasswordReset) => "restablecer tu contraseña",
        (Locale::Fr, PhoneVerify) => "vérifier votre téléphone",
        (Locale::Fr, Login2fa) => "vous connecter",
        (Locale::Fr, Enable2fa) => "activer la double authentification",
        (Locale::Fr, Disable2fa) => "désactiver la double authentification",
        (Locale::Fr, PhoneChange) => "utiliser ce numéro pour votre compte",
        (Locale::Fr, PasswordReset) => "réinitialiser votre mot de passe",
        (Locale::De, PhoneVerify) => "dein Telefon zu bestätigen",
        (Locale::De, Login2fa) => "dich anzumelden",
        (Locale::De, Enable2fa) => "die Zwei-Faktor-Anmeldung einzuschalten",
        (Locale::De, Disable2fa) => "die Zwei-Faktor-Anmeldung auszuschalten",
        (Locale::De, PhoneChange) => "diese Nummer für dein Konto zu nutzen",
        (Locale::De, PasswordReset) => "dein Passwort zurückzusetzen",
        (Locale::Pt, PhoneVerify) => "verificar o seu telefone",
        (Locale::Pt, Login2fa) => "entrar",
        (Locale::Pt, Enable2fa) => "ativar a verificação em duas etapas",
        (Locale::Pt, Disable2fa) => "desativar a verificação em duas etapas",
        (Locale::Pt, PhoneChange) => "usar este número na sua conta",
        (Locale::Pt, PasswordReset) => "redefinir a sua senha",
    }
}

/// The shipped template of a language and purpose: `{code}`, `{app}` and
/// `{minutes}` are filled in by [`Templates::render`].
pub fn shipped(locale: Locale, purpose: Purpose) -> String {
    let a = action(locale, purpose);
    match locale {
        Locale::En => format!(
            "{{code}} is your {{app}} code to {a}. It expires in {{minutes}} minutes. Never share it."
        ),
        Locale::Es => format!(
            "{{code}} es tu código de {{app}} para {a}. Caduca en {{minutes}} minutos. No lo compartas."
        ),
        Locale::Fr => format!(
            "{{code}} est votre code {{app}} pour {a}. Il expire dans {{minutes}} minutes. Ne le partagez pas."
        ),
        Locale::De => format!(
            "{{code}} ist dein {{app}}-Code, um {a}. Gültig für {{minutes}} Minuten. Gib ihn nie weiter."
        ),
        Locale::Pt => format!(
            "{{code}} é o seu código {{app}} para {a}. Expira em {{minutes}} minutos. Não o partilhe."
        ),
    }
}

/// An SMS that tells an account's owner something happened: it carries no
/// code, so its template may hold only `{app}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// Someone signed up with the account's e-mail or verified phone.
    SignupAttempt,
    /// The account's phone number was changed (sent to the old number).
    PhoneChanged,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 2] = [NoticeKind::SignupAttempt, NoticeKind::PhoneChanged];

    /// Its name in override files and the outbox's `purpose` column.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::SignupAttempt => "signup_notice",
            NoticeKind::PhoneChanged => "phone_change_notice",
        }
    }

    pub fn parse(s: &str) -> Option<NoticeKind> {
        NoticeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The shipped text of a notice; `{app}` is filled in by
/// [`Templates::render_notice`].
pub fn shipped_notice(locale: Locale, kind: NoticeKind) -> &'static str {
    use NoticeKind::*;
    match (locale, kind) {
        (Locale::En, SignupAttempt) => {
            "{app}: someone tried to sign up with your e-mail or phone number. \
             If it was you, log in instead. If not, nothing was changed."
        }
        (Locale::Es, SignupAttempt) => {
            "{app}: alguien intentó registrarse con tu e-mail o teléfono. \
             Si fuiste tú, inicia sesión; si no, nada ha cambiado."
        }
        (Locale::Fr, SignupAttempt) => {
            "{app} : quelqu'un a tenté de s'inscrire avec votre e-mail ou votre numéro. \
             Si c'était vous, connectez-vous. Sinon, rien n'a été modifié."
        }
        (Locale::De, SignupAttempt) => {
            "{app}: Jemand wollte sich mit deiner E-Mail-Adresse oder Telefonnummer \
             registrieren. Warst du es, melde dich an. Sonst wurde nichts geändert."
        }
        (Locale::Pt, SignupAttempt) => {
            "{app}: alguém tentou registar-se com o seu e-mail ou telefone. \
             Se foi você, inicie sessão; se não, nada foi alterado."
        }
        (Locale::En, PhoneChanged) => {
            "{app}: the phone number of your account was changed to another number. \
             If this was not you, reset your password and contact support."
        }
        (Locale::Es, PhoneChanged) => {
            "{app}: el número de teléfono de tu cuenta se cambió por otro. \
             Si no fuiste tú, restablece tu contraseña y contacta con soporte."
        }
        (Locale::Fr, PhoneChanged) => {
            "{app} : le numéro de votre compte a été remplacé par un autre. \
             Si ce n'était pas vous, réinitialisez votre mot de passe et contactez le support."
        }
        (Locale::De, PhoneChanged) => {
            "{app}: Die Telefonnummer deines Kontos wurde durch eine andere ersetzt. \
             Warst du das nicht, setze dein Passwort zurück und kontaktiere den Support."
        }
        (Locale::Pt, PhoneChanged) => {
            "{app}: o número de telefone da sua conta foi alterado para outro. \
             Se não foi você, redefina a sua senha e contacte o suporte."
        }
    }
}

/// Why an operator's notice template is refused: a notice carries no code, so
/// `{code}` and `{minutes}` have nothing to fill in.
pub fn check_notice_template(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        let after = &rest[i..];
        match after.strip_prefix("{app}") {
            Some(r) => rest = r,
            None => return Err("unknown placeholder: a notice fills in only {app}".into()),
        }
    }
    check_controls(text)
}

fn check_controls(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err("must not contain control characters other than line breaks".into());
    }
    Ok(())
}

/// Why an operator's template is refused.
pub fn check_template(text: &str) -> Result<(), String> {
    let codes = text.matches("{code}").count();
    if codes != 1 {
        return Err(format!(
            "must contain the {{code}} placeholder exactly once (found {codes})"
        ));
    }
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        let after = &rest[i..];
        let known = ["{code}", "{app}", "{minutes}"]
            .into_iter()
            .find(|p| after.starts_with(p));
        match known {
            Some(p) => rest = &after[p.len()..],
            None => {
                return Err(
                    "unknown placeholder: only {code}, {app} and {minutes} are filled in".into(),
                )
            }
        }
    }
    check_controls(text)
}

/// Every template in use: the shipped ones, with the operator's overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Templates {
    overrides: HashMap<(Locale, Purpose), String>,
    notice_overrides: HashMap<(Locale, NoticeKind), String>,
}

impl Templates {
    /// Replaces the template of `locale` and `purpose` (checked by the caller
    /// with [`check_template`]).
    pub fn set_override(&mut self, locale: Locale, purpose: Purpose, text: String) {
        self.overrides.insert((locale, purpose), text);
    }

    pub fn is_overridden(&self, locale: Locale, purpose: Purpose) -> bool {
        self.overrides.contains_key(&(locale, purpose))
    }

    pub fn template(&self, locale: Locale, purpose: Purpose) -> String {
        self.overrides
            .get(&(locale, purpose))
            .cloned()
            .unwrap_or_else(|| shipped(locale, purpose))
    }

    /// Replaces the notice text of `locale` and `kind` (checked by the caller
    /// with [`check_notice_template`]).
    pub fn set_notice_override(&mut self, locale: Locale, kind: NoticeKind, text: String) {
        self.notice_overrides.insert((locale, kind), text);
    }

    pub fn is_notice_overridden(&self, locale: Locale, kind: NoticeKind) -> bool {
        self.notice_overrides.contains_key(&(locale, kind))
    }

    /// A notice in the account's language, with `app` as the app's name.
    pub fn render_notice(&self, locale: Locale, kind: NoticeKind, app: &str) -> String {
        let template = self
            .notice_overrides
            .get(&(locale, kind))
            .map(String::as_str)
            .unwrap_or_else(|| shipped_notice(locale, kind));
        // `fill` with no code: an app name holding `{code}` stays literal text.
        fill(template, app, "", 0)
    }

    /// The message: the template filled in, then, with a WebOTP domain, a
    /// blank line and `@domain #code` as the last line (the origin-bound
    /// one-time code format browsers autofill from).
    pub fn render(
        &self,
        locale: Locale,
        purpose: Purpose,
        app: &str,
        code: &str,
        minutes: u64,
        webotp_domain: Option<&str>,
    ) -> String {
        let text = fill(&self.template(locale, purpose), app, code, minutes);
        match webotp_domain {
            Some(d) => format!("{text}\n\n@{d} #{code}"),
            None => text,
        }
    }
}

/// Fills the placeholders in one pass, so an app name containing `{code}`
/// cannot add a second code.
fn fill(template: &str, app: &str, code: &str, minutes: u64) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("{code}") {
            out.push_str(code);
            rest = r;
        } else if let Some(r) = after.strip_prefix("{app}") {
            out.push_str(app);
            rest = r;
        } else if let Some(r) = after.strip_prefix("{minutes}") {
            out.push_str(&minutes.to_string());
            rest = r;
        } else {
            out.push('{');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The encoding an SMS text needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        })
    }
}

/// The GSM 03.38 basic character set (one septet each).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: two septets each (escape + character).
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{c}";

/// What a text costs: its encoding, its length in that encoding's units
/// (septets, or UTF-16 code units) and the number of segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    pub units: usize,
    pub segments: usize,
}

/// Counts segments as carriers do: GSM-7 when every character is in the basic
/// or extension table (extension characters take two septets), 160 septets in
/// one segment or 153 per segment of a concatenated message; otherwise UCS-2,
/// 70 UTF-16 units in one segment or 67 per part.
pub fn segments(text: &str) -> Segments {
    let mut septets = 0usize;
    let mut gsm = true;
    for c in text.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENSION.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, part) = if gsm {
        (Encoding::Gsm7, septets, 160, 153)
    } else {
        (Encoding::Ucs2, text.encode_utf16().count(), 70, 67)
    };
    let segments = match units {
        0 => 1,
        n if n <= single => 1,
        n => n.div_ceil(part),
    };
    Segments {
        encoding,
        units,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_shipped_notice_names_the_app_once_and_takes_no_code() {
        let t = Templates::default();
        for locale in Locale::ALL {
            for kind in NoticeKind::ALL {
                let shipped = shipped_notice(locale, kind);
                assert_eq!(shipped.matches("{app}").count(), 1, "{locale} {kind:?}");
                assert_eq!(check_notice_template(shipped), Ok(()), "{locale} {kind:?}");
                let text = t.render_notice(locale, kind, "Acme {code}");
                assert!(text.starts_with("Acme {code}"), "{text}");
                assert!(!text.contains("{app}"), "{text}");
                assert!(segments(&text).segments <= 2, "{locale} {kind:?}: {text}");
            }
        }
        // Each language says it in its own words.
        let texts: std::collections::HashSet<_> = Locale::ALL
            .map(|l| shipped_notice(l, NoticeKind::PhoneChanged))
            .into_iter()
            .collect();
        assert_eq!(texts.len(), Locale::ALL.len());
        assert_eq!(
            NoticeKind::parse("signup_notice"),
            Some(NoticeKind::SignupAttempt)
        );
        assert_eq!(NoticeKind::parse("phone_verify"), None);
    }

    #[test]
    fn a_notice_override_replaces_one_language_and_kind_only() {
        let mut t = Templates::default();
        t.set_notice_override(
            Locale::De,
            NoticeKind::SignupAttempt,
            "{app}: Achtung.".into(),
        );
        assert_eq!(
            t.render_notice(Locale::De, NoticeKind::SignupAttempt, "Acme"),
            "Acme: Achtung."
        );
        assert!(t.is_notice_overridden(Locale::De, NoticeKind::SignupAttempt));
        assert!(!t.is_notice_overridden(Locale::De, NoticeKind::PhoneChanged));
        assert!(t
            .render_notice(Locale::En, NoticeKind::SignupAttempt, "Acme")
            .starts_with("Acme: someone tried to sign up"));
        assert!(check_notice_template("{app}: your code is {code}").is_err());
        assert!(check_notice_template("valid for {minutes} min").is_err());
        assert!(check_notice_template("  ").is_err());
        assert!(check_notice_template("a\u{7}bell").is_err());
        assert_eq!(check_notice_template("no app name, fine"), Ok(()));
    }

    #[test]
    fn accept_language_picks_the_preferred_shipped_language() {
        let p = Locale::from_accept_language;
        assert_eq!(p("es-MX,es;q=0.9,en;q=0.5"), Some(Locale::Es));
        assert_eq!(p("en;q=0.5, de-CH"), Some(Locale::De));
        assert_eq!(p("ja, pt-BR;q=0.8, fr;q=0.7"), Some(Locale::Pt));
        assert_eq!(p("fr;q=0.7, es;q=0.7"), Some(Locale::Fr));
        assert_eq!(p("de;q=0, it"), None);
        assert_eq!(p("ja,zh-CN;q=0.9"), None);
        assert_eq!(p("*"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("ES_es"), Some(Locale::Es));
        assert_eq!(p("es;q=abc, fr;q=0.1"), Some(Locale::Fr));
    }

    #[test]
    fn english_text_is_unchanged() {
        let t = Templates::default().render(
            Locale::En,
            Purpose::Login2fa,
            "authgate",
            "123456",
            10,
            None,
        );
        assert_eq!(
            t,
            "123456 is your authgate code to sign in. It expires in 10 minutes. Never share it."
        );
    }

    #[test]
    fn webotp_line_is_last() {
        let t = Templates::default().render(
            Locale::Es,
            Purpose::PhoneVerify,
            "authgate",
            "123456",
            10,
            Some("auth.example.com"),
        );
        assert!(t.starts_with("123456 es tu código de authgate para verificar tu teléfono."));
        assert_eq!(t.lines().last(), Some("@auth.example.com #123456"));
    }

    #[test]
    fn templates_are_checked() {
        assert!(check_template("{app}: {code} ({minutes} min)").is_ok());
        assert!(check_template("{app}: no code").is_err());
        assert!(check_template("{code} {code}").is_err());
        assert!(check_template("{code} {name}").is_err());
        assert!(check_template("{code}\u{7}").is_err());
        assert!(check_template("{code}\nline two").is_ok());
        for l in Locale::ALL {
            for p in Purpose::ALL {
                assert_eq!(check_template(&shipped(l, p)), Ok(()), "{l} {p:?}");
            }
        }
    }

    #[test]
    fn overrides_replace_one_template() {
        let mut t = Templates::default();
        t.set_override(Locale::Fr, Purpose::Login2fa, "{app} : {code}".into());
        assert_eq!(
            t.render(Locale::Fr, Purpose::Login2fa, "X", "42", 5, None),
            "X : 42"
        );
        assert!(t
            .render(Locale::Fr, Purpose::PhoneVerify, "X", "42", 5, None)
            .starts_with("42 est votre code X"));
    }

    #[test]
    fn segment_counts() {
        let s = segments(&"a".repeat(160));
        assert_eq!((s.encoding, s.units, s.segments), (Encoding::Gsm7, 160, 1));
        assert_eq!(segments(&"a".repeat(161)).segments, 2);
        assert_eq!(segments(&"a".repeat(306)).segments, 2);
        assert_eq!(segments(&"a".repeat(307)).segments, 3);
        // Extension characters take two septets.
        let s = segments(&"€".repeat(80));
        assert_eq!((s.encoding, s.units, s.segments), (Encoding::Gsm7, 160, 1));
        assert_eq!(segments(&format!("{}€", "a".repeat(159))).segments, 2);
        // é, ñ, ü are in the basic table; ó and ç are not.
        assert_eq!(segments("éñüÄß¿¡").encoding, Encoding::Gsm7);
        let s = segments(&"ó".repeat(70));
        assert_eq!((s.encoding, s.units, s.segments), (Encoding::Ucs2, 70, 1));
        assert_eq!(segments(&"ó".repeat(71)).segments, 2);
        assert_eq!(segments(&"ó".repeat(134)).segments, 2);
        assert_eq!(segments(&"ó".repeat(135)).segments, 3);
        // An emoji is two UTF-16 units.
        assert_eq!(segments("😀").units, 2);
        assert_eq!(segments("").segments, 1);
        // The shipped English login text fits one GSM-7 segment.
        let en = Templates::default().render(
            Locale::En,
            Purpose::Login2fa,
            "authgate",
            "123456",
            10,
            None,
        );
        assert_eq!(segments(&en).encoding, Encoding::Gsm7);
        assert_eq!(segments(&en).segments, 1);
    }

    fn purpose() -> impl Strategy<Value = Purpose> {
        (0usize..Purpose::ALL.len()).prop_map(|i| Purpose::ALL[i])
    }

    fn locale() -> impl Strategy<Value = Locale> {
        (0usize..Locale::ALL.len()).prop_map(|i| Locale::ALL[i])
    }

    proptest! {
        #[test]
        fn the_code_appears_once_in_the_human_part(
            l in locale(),
            p in purpose(),
            code in "[0-9]{4,10}",
            app in "[A-Za-z{}]{1,30}",
            minutes in 1u64..=60,
            webotp in proptest::option::of("[a-z]{1,10}\\.example"),
        ) {
            let text = Templates::default().render(l, p, &app, &code, minutes, webotp.as_deref());
            let human = match &webotp {
                Some(d) => {
                    let last = format!("\n\n@{d} #{code}");
                    prop_assert!(text.ends_with(&last));
                    text[..text.len() - last.len()].to_owned()
                }
                None => text.clone(),
            };
            prop_assert_eq!(human.matches(code.as_str()).count(), 1, "{}", human);
            prop_assert!(human.contains(&minutes.to_string()));
        }

        #[test]
        fn accept_language_never_panics(h in "\\PC{0,60}") {
            let _ = Locale::from_accept_language(&h);
        }
    }
}
