//! The texts users receive (`notify_user`), from templates the operator can change: the
//! embedded ones in `config/templates/`, or files of the same names in `RR_TEMPLATES_DIR`.
//! A template's first line is `Subject: ...`; placeholders are `{{user}}`, `{{display_name}}`,
//! `{{case_id}}`, `{{sspr_url}}`, `{{helpdesk}}`, `{{delivered_by}}`, `{{what_happened}}`.
//! No placeholder ever holds a password.

use std::collections::BTreeMap;
use std::path::Path;

/// Which situation a user mail describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UserMail {
    /// An administrator reset the password (a temporary one comes through a verified channel).
    Reset,
    /// The user changes the password through self-service password reset.
    SelfService,
    /// Sign-in is blocked; the helpdesk lets the user back in.
    Blocked,
    /// The risk was dismissed or investigated: change the password (SSPR) as a precaution.
    Advisory,
}

impl UserMail {
    /// The template's file name.
    pub fn file(self) -> &'static str {
        match self {
            UserMail::Reset => "user-reset.txt",
            UserMail::SelfService => "user-self-service.txt",
            UserMail::Blocked => "user-blocked.txt",
            UserMail::Advisory => "user-advisory.txt",
        }
    }

    fn all() -> [UserMail; 4] {
        [
            UserMail::Reset,
            UserMail::SelfService,
            UserMail::Blocked,
            UserMail::Advisory,
        ]
    }

    fn embedded(self) -> &'static str {
        match self {
            UserMail::Reset => include_str!("../../../config/templates/user-reset.txt"),
            UserMail::SelfService => {
                include_str!("../../../config/templates/user-self-service.txt")
            }
            UserMail::Blocked => include_str!("../../../config/templates/user-blocked.txt"),
            UserMail::Advisory => include_str!("../../../config/templates/user-advisory.txt"),
        }
    }
}

/// A template that cannot be used, named by file.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {file}: {problem}")]
    Invalid { file: String, problem: String },
}

/// The user-mail templates.
#[derive(Debug, Clone)]
pub struct Templates {
    texts: BTreeMap<UserMail, (String, String)>,
}

fn parse(file: &str, text: &str) -> Result<(String, String), TemplateError> {
    let invalid = |problem: &str| TemplateError::Invalid {
        file: file.to_owned(),
        problem: problem.to_owned(),
    };
    let (first, body) = text.split_once('\n').unwrap_or((text, ""));
    let subject = first
        .strip_prefix("Subject:")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("the first line must be `Subject: ...`"))?;
    if text.to_ascii_lowercase().contains("{{password") {
        return Err(invalid("a user mail never carries a password"));
    }
    Ok((subject.to_owned(), body.trim_start_matches('\n').to_owned()))
}

impl Templates {
    /// The templates compiled into the binary.
    pub fn embedded() -> Self {
        let texts = UserMail::all()
            .into_iter()
            .map(|kind| {
                let parsed = parse(kind.file(), kind.embedded())
                    .expect("embedded templates are valid (tested)");
                (kind, parsed)
            })
            .collect();
        Self { texts }
    }

    /// The templates of `dir`, each falling back to the embedded one when its file is absent.
    pub fn from_dir(dir: &Path) -> Result<Self, TemplateError> {
        let mut templates = Self::embedded();
        for kind in UserMail::all() {
            let path = dir.join(kind.file());
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    templates.texts.insert(kind, parse(kind.file(), &text)?);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(TemplateError::Invalid {
                        file: path.display().to_string(),
                        problem: e.to_string(),
                    });
                }
            }
        }
        Ok(templates)
    }

    /// The subject and body of `kind` with `values` filled in.
    pub fn render(&self, kind: UserMail, values: &[(&str, &str)]) -> (String, String) {
        let (subject, body) = self.texts.get(&kind).cloned().unwrap_or_default();
        let fill = |mut text: String| {
            for (name, value) in values {
                text = text.replace(&format!("{{{{{name}}}}}"), value);
            }
            text
        };
        (fill(subject), fill(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_templates_render_without_leftover_placeholders() {
        let templates = Templates::embedded();
        let values = [
            ("user", "adele@contoso.com"),
            ("display_name", "Adele"),
            ("case_id", "c-1"),
            ("sspr_url", "https://aka.ms/sspr"),
            ("helpdesk", "x1234"),
            ("delivered_by", "your manager"),
            ("what_happened", "risk dismissed"),
        ];
        for kind in UserMail::all() {
            let (subject, body) = templates.render(kind, &values);
            assert!(!subject.is_empty());
            assert!(!body.contains("{{"), "{kind:?}: {body}");
            assert!(body.contains("c-1"));
        }
    }

    #[test]
    fn an_operator_template_replaces_one_and_a_bad_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("templates-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("user-advisory.txt"),
            "Subject: Hi {{user}}\nCall {{helpdesk}}.\n",
        )
        .unwrap();
        let t = Templates::from_dir(&dir).unwrap();
        let (subject, body) = t.render(UserMail::Advisory, &[("user", "u"), ("helpdesk", "h")]);
        assert_eq!((subject.as_str(), body.as_str()), ("Hi u", "Call h.\n"));
        assert!(
            t.render(UserMail::Reset, &[])
                .0
                .contains("password was reset")
        );
        std::fs::write(dir.join("user-reset.txt"), "no subject line\n").unwrap();
        assert!(
            Templates::from_dir(&dir)
                .unwrap_err()
                .to_string()
                .contains("user-reset.txt")
        );
        std::fs::write(
            dir.join("user-reset.txt"),
            "Subject: x\nyour password: {{password}}\n",
        )
        .unwrap();
        assert!(
            Templates::from_dir(&dir)
                .unwrap_err()
                .to_string()
                .contains("never carries a password")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
