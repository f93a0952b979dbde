//! XEP-0004: Data Forms, the subset the server's modules need: reading a form a client
//! submits (`type='submit'`, §3.1) into its fields and values, and writing the forms the
//! server offers (`type='form'`) or returns (`type='result'`).
//!
//! Owns: [`DataForm`], [`Field`], the form and field type vocabularies (§3.1, §3.3), the
//! `FORM_TYPE` convention of XEP-0068 §2 and the boolean lexical forms (§3.3 note 10).
//! Must not touch: what a field means. The using protocol (e.g. XEP-0313 queries) decides
//! which fields it accepts, how many values each may carry and how values are validated.
//!
//! Not implemented: multi-item results (`<reported/>`, `<item/>`, §3.4) and media
//! elements; a parsed form keeps unknown field children verbatim in [`Field::extra`].

use rookery_stanza::ns;
use rookery_xml::Element;

/// The `var` of the hidden field naming the form's namespace (XEP-0068 §2).
pub const FORM_TYPE: &str = "FORM_TYPE";

/// Why an element is not an acceptable data form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("not an <x xmlns='jabber:x:data'/> element")]
    NotAForm,
    /// §3.1: the `type` attribute is required and one of form, submit, cancel, result.
    #[error("missing or unknown form type")]
    BadFormType,
    /// §3.2: every field but `fixed` ones needs a `var`.
    #[error("field without var")]
    MissingVar,
    /// §3.2: `var` identifies a field uniquely within the form.
    #[error("field {0:?} appears more than once")]
    DuplicateVar(String),
    /// §3.2: only multi-valued types may carry more than one `<value/>`.
    #[error("field {0:?} has more than one value")]
    MultipleValues(String),
}

/// XEP-0004 §3.1 form types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKind {
    Form,
    Submit,
    Cancel,
    Result,
}

impl FormKind {
    pub fn parse(s: &str) -> Option<FormKind> {
        match s {
            "form" => Some(FormKind::Form),
            "submit" => Some(FormKind::Submit),
            "cancel" => Some(FormKind::Cancel),
            "result" => Some(FormKind::Result),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FormKind::Form => "form",
            FormKind::Submit => "submit",
            FormKind::Cancel => "cancel",
            FormKind::Result => "result",
        }
    }
}

/// XEP-0004 §3.3 field types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Boolean,
    Fixed,
    Hidden,
    JidMulti,
    JidSingle,
    ListMulti,
    ListSingle,
    TextMulti,
    TextPrivate,
    TextSingle,
}

impl FieldType {
    /// §3.3: a type the receiver does not understand is `text-single`.
    pub fn parse(s: &str) -> FieldType {
        match s {
            "boolean" => FieldType::Boolean,
            "fixed" => FieldType::Fixed,
            "hidden" => FieldType::Hidden,
            "jid-multi" => FieldType::JidMulti,
            "jid-single" => FieldType::JidSingle,
            "list-multi" => FieldType::ListMulti,
            "list-single" => FieldType::ListSingle,
            "text-multi" => FieldType::TextMulti,
            "text-private" => FieldType::TextPrivate,
            _ => FieldType::TextSingle,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FieldType::Boolean => "boolean",
            FieldType::Fixed => "fixed",
            FieldType::Hidden => "hidden",
            FieldType::JidMulti => "jid-multi",
            FieldType::JidSingle => "jid-single",
            FieldType::ListMulti => "list-multi",
            FieldType::ListSingle => "list-single",
            FieldType::TextMulti => "text-multi",
            FieldType::TextPrivate => "text-private",
            FieldType::TextSingle => "text-single",
        }
    }

    /// §3.2: the types that may carry more than one `<value/>`.
    pub fn multi_valued(self) -> bool {
        matches!(self, FieldType::JidMulti | FieldType::ListMulti | FieldType::TextMulti | FieldType::Hidden)
    }
}

/// One `<field/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Empty only for a `fixed` field without `var`.
    pub var: String,
    /// The `type` attribute as given; submitted forms usually omit it (§3.2).
    pub kind: Option<FieldType>,
    pub label: Option<String>,
    /// The character data of each `<value/>`, in order, untrimmed.
    pub values: Vec<String>,
    /// Other children (`<desc/>`, `<required/>`, `<option/>`, XEP-0122 `<validate/>`, ...),
    /// written back as they are.
    pub extra: Vec<Element>,
}

impl Field {
    pub fn new(var: &str, kind: FieldType) -> Field {
        Field { var: var.to_owned(), kind: Some(kind), label: None, values: Vec::new(), extra: Vec::new() }
    }

    #[must_use]
    pub fn label(mut self, label: &str) -> Field {
        self.label = Some(label.to_owned());
        self
    }

    #[must_use]
    pub fn value(mut self, v: impl Into<String>) -> Field {
        self.values.push(v.into());
        self
    }

    /// Adds a child element other than `<value/>` (e.g. a `<validate/>`).
    #[must_use]
    pub fn child(mut self, el: Element) -> Field {
        self.extra.push(el);
        self
    }

    /// The only value of a single-valued field: None without values,
    /// [`FormError::MultipleValues`] with more than one.
    pub fn single(&self) -> Result<Option<&str>, FormError> {
        match self.values.as_slice() {
            [] => Ok(None),
            [v] => Ok(Some(v.as_str())),
            _ => Err(FormError::MultipleValues(self.var.clone())),
        }
    }

    fn parse(el: &Element) -> Result<Field, FormError> {
        let kind = el.get_attr("type").map(FieldType::parse);
        let var = el.get_attr("var").unwrap_or_default();
        if var.is_empty() && kind != Some(FieldType::Fixed) {
            return Err(FormError::MissingVar);
        }
        let mut field = Field {
            var: var.to_owned(),
            kind,
            label: el.get_attr("label").map(str::to_owned),
            values: Vec::new(),
            extra: Vec::new(),
        };
        for child in el.elements() {
            if child.is("value", ns::DATA_FORMS) {
                field.values.push(child.text_content());
            } else {
                field.extra.push(child.clone());
            }
        }
        if field.values.len() > 1 && kind.is_some_and(|k| !k.multi_valued()) {
            return Err(FormError::MultipleValues(field.var));
        }
        Ok(field)
    }

    pub fn to_element(&self) -> Element {
        let mut el = Element::new("field", ns::DATA_FORMS);
        if let Some(k) = self.kind {
            el.set_attr("type", k.name());
        }
        if !self.var.is_empty() {
            el.set_attr("var", self.var.as_str());
        }
        if let Some(l) = &self.label {
            el.set_attr("label", l.as_str());
        }
        for v in &self.values {
            el.push_child(Element::new("value", ns::DATA_FORMS).text(v.as_str()));
        }
        for x in &self.extra {
            el.push_child(x.clone());
        }
        el
    }
}

/// A data form: `<x xmlns='jabber:x:data' type='...'/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataForm {
    pub kind: FormKind,
    pub title: Option<String>,
    pub instructions: Vec<String>,
    pub fields: Vec<Field>,
}

impl DataForm {
    pub fn new(kind: FormKind) -> DataForm {
        DataForm { kind, title: None, instructions: Vec::new(), fields: Vec::new() }
    }

    /// A form whose first field is the hidden `FORM_TYPE` (XEP-0068 §2).
    pub fn with_form_type(kind: FormKind, form_type: &str) -> DataForm {
        DataForm::new(kind).field(Field::new(FORM_TYPE, FieldType::Hidden).value(form_type))
    }

    #[must_use]
    pub fn field(mut self, f: Field) -> DataForm {
        self.fields.push(f);
        self
    }

    /// Reads a form. Structural errors (§3.1, §3.2) are refused here; the meaning of the
    /// fields is the caller's.
    pub fn parse(el: &Element) -> Result<DataForm, FormError> {
        if !el.is("x", ns::DATA_FORMS) {
            return Err(FormError::NotAForm);
        }
        let kind = el.get_attr("type").and_then(FormKind::parse).ok_or(FormError::BadFormType)?;
        let mut form = DataForm::new(kind);
        for child in el.elements().filter(|c| c.ns == ns::DATA_FORMS) {
            match child.name.as_str() {
                "title" => form.title = Some(child.text_content()),
                "instructions" => form.instructions.push(child.text_content()),
                "field" => {
                    let f = Field::parse(child)?;
                    if !f.var.is_empty() && form.get(&f.var).is_some() {
                        return Err(FormError::DuplicateVar(f.var));
                    }
                    form.fields.push(f);
                }
                _ => {}
            }
        }
        Ok(form)
    }

    pub fn get(&self, var: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.var == var)
    }

    /// The (first) value of the `FORM_TYPE` field, if any.
    pub fn form_type(&self) -> Option<&str> {
        self.get(FORM_TYPE).and_then(|f| f.values.first()).map(String::as_str)
    }

    pub fn to_element(&self) -> Element {
        let mut el = Element::new("x", ns::DATA_FORMS).attr("type", self.kind.name());
        if let Some(t) = &self.title {
            el.push_child(Element::new("title", ns::DATA_FORMS).text(t.as_str()));
        }
        for i in &self.instructions {
            el.push_child(Element::new("instructions", ns::DATA_FORMS).text(i.as_str()));
        }
        for f in &self.fields {
            el.push_child(f.to_element());
        }
        el
    }
}

/// §3.3 note 10: `1`/`true` and `0`/`false` (the xs:boolean lexical forms).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(xml: &str) -> Result<DataForm, FormError> {
        DataForm::parse(&rookery_xml::parse_element(xml.as_bytes(), "jabber:client").unwrap())
    }

    #[test]
    fn reads_a_submitted_form() {
        let f = parse(
            "<x xmlns='jabber:x:data' type='submit'>\
               <field var='FORM_TYPE' type='hidden'><value>urn:x</value></field>\
               <field var='with'><value> a@b </value></field>\
               <field var='ids'><value>1</value><value>2</value></field>\
               <field var='empty'/>\
               <field type='fixed'><value>header</value></field>\
               <other/>\
             </x>",
        )
        .unwrap();
        assert_eq!(f.kind, FormKind::Submit);
        assert_eq!(f.form_type(), Some("urn:x"));
        assert_eq!(f.get("with").unwrap().single().unwrap(), Some(" a@b "));
        assert_eq!(f.get("with").unwrap().kind, None);
        assert_eq!(f.get("ids").unwrap().values, ["1", "2"]);
        assert_eq!(f.get("ids").unwrap().single(), Err(FormError::MultipleValues("ids".into())));
        assert_eq!(f.get("empty").unwrap().single().unwrap(), None);
        assert_eq!(f.fields.len(), 5);
        assert!(f.get("nope").is_none());
    }

    #[test]
    fn structural_errors() {
        assert_eq!(parse("<x xmlns='urn:other' type='submit'/>"), Err(FormError::NotAForm));
        assert_eq!(parse("<x xmlns='jabber:x:data'/>"), Err(FormError::BadFormType));
        assert_eq!(parse("<x xmlns='jabber:x:data' type='sumbit'/>"), Err(FormError::BadFormType));
        assert_eq!(
            parse("<x xmlns='jabber:x:data' type='submit'><field><value>v</value></field></x>"),
            Err(FormError::MissingVar)
        );
        assert_eq!(
            parse("<x xmlns='jabber:x:data' type='submit'><field var='a'/><field var='a'/></x>"),
            Err(FormError::DuplicateVar("a".into()))
        );
        assert_eq!(
            parse(
                "<x xmlns='jabber:x:data' type='submit'>\
                   <field var='a' type='text-single'><value>1</value><value>2</value></field></x>"
            ),
            Err(FormError::MultipleValues("a".into()))
        );
        // Unknown types are text-single (§3.3), so the same rule applies.
        assert_eq!(
            parse(
                "<x xmlns='jabber:x:data' type='submit'>\
                   <field var='a' type='x-new'><value>1</value><value>2</value></field></x>"
            ),
            Err(FormError::MultipleValues("a".into()))
        );
    }

    #[test]
    fn writes_and_reads_back() {
        let validate =
            Element::new("validate", "http://jabber.org/protocol/xdata-validate").attr("datatype", "xs:string");
        let mut form = DataForm::with_form_type(FormKind::Form, "urn:x")
            .field(Field::new("with", FieldType::JidSingle).label("With <who>"))
            .field(Field::new("ids", FieldType::ListMulti).child(validate.clone()));
        form.title = Some("T".into());
        form.instructions.push("I & J".into());
        let el = form.to_element();
        let bytes = el.to_bytes("jabber:client");
        let back = DataForm::parse(&rookery_xml::parse_element(&bytes, "jabber:client").unwrap()).unwrap();
        assert_eq!(back, form);
        assert_eq!(back.fields[0].kind, Some(FieldType::Hidden));
        assert_eq!(back.get("ids").unwrap().extra, [validate]);
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.starts_with("<x xmlns=\"jabber:x:data\" type=\"form\">"), "{text}");
    }

    #[test]
    fn type_names_round_trip() {
        for t in [
            FieldType::Boolean,
            FieldType::Fixed,
            FieldType::Hidden,
            FieldType::JidMulti,
            FieldType::JidSingle,
            FieldType::ListMulti,
            FieldType::ListSingle,
            FieldType::TextMulti,
            FieldType::TextPrivate,
            FieldType::TextSingle,
        ] {
            assert_eq!(FieldType::parse(t.name()), t);
        }
        for k in [FormKind::Form, FormKind::Submit, FormKind::Cancel, FormKind::Result] {
            assert_eq!(FormKind::parse(k.name()), Some(k));
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool(" true "), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }
}
