//! `#[tokengate::operation]`: registers a plain `fn` as a tokengate operation.
//!
//! Use it through `tokengate` (its default feature `macros` re-exports it), not from
//! this crate directly: the generated code names the engine's types as `::tokengate::…`,
//! so the crate that uses the attribute must depend on `tokengate` under that name.
//!
//! ```
//! use tokengate::Engine;
//!
//! /// One term of the Leibniz series for π/4.
//! #[tokengate::operation(weight = "light")]
//! fn pi_term(k: u64) -> f64 {
//!     let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
//!     sign / (2 * k + 1) as f64
//! }
//!
//! /// Several arguments: the operation takes them as one tuple.
//! #[tokengate::operation(weight = "heavy", timeout_ms = 500, retries = 2, name = "pi.range")]
//! fn pi_range(from: u64, to: u64) -> f64 {
//!     (from..to).map(pi_term).sum() // the plain fn stays callable
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let engine = Engine::builder().build()?;
//!     let term = pi_term::register(&engine)?; // Operation<u64, f64>
//!     let range = pi_range::register(&engine)?; // Operation<(u64, u64), f64>
//!     assert_eq!(term.submit(0).wait()?, 1.0);
//!     let quarter = range.submit((0, 1_000)).wait()?;
//!     assert!((4.0 * quarter - std::f64::consts::PI).abs() < 1e-2);
//!     assert_eq!(pi_range::NAME, "pi.range");
//!     // Registering the same name twice is refused, as with `Engine::register`.
//!     assert!(pi_term::register(&engine).is_err());
//!     Ok(())
//! }
//! ```

#![warn(missing_docs, rust_2018_idioms)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, Item, ItemFn, LitInt, LitStr, ReturnType, Type};

/// Registers a plain `fn` as an operation: `name::register(&engine)`.
///
/// ```text
/// #[tokengate::operation(weight = "light" | "medium" | "heavy",
///                        timeout_ms = 50,     // optional: OperationBuilder::timeout
///                        retries = 2,         // optional: RetryPolicy::new(retries + 1)
///                        name = "pi.term")]   // optional: default, the fn's name
/// fn name(args…) -> R { … }
/// ```
///
/// The `fn` stays as written and callable. Beside it (same visibility) the attribute
/// adds an uninhabited type of the same name — a type and a fn may share a name —
/// whose items are
///
/// * `name::register(engine: &tokengate::Engine)
///   -> Result<tokengate::Operation<A, R>, tokengate::RegisterError>`, where `A` is the
///   argument's type for one argument, the tuple of the arguments' types for several,
///   and `()` for none; `R` is the return type (`()` when there is none);
/// * `name::NAME`, the operation's name on the engine (and the control port).
///
/// A type rather than a module, so that the generated code resolves the fn and its
/// argument types exactly where the fn is written, also inside a function body.
///
/// `retries = n` retries panics, errors and time-outs up to `n` times (it needs
/// `A: Clone`). A fn returning `Result` is registered as is: its token's value is the
/// `Result`. For other options (size hints, dedupe, locality, fallible registration)
/// use `Engine::operation` directly.
///
/// Refused, with an error at the offending token: unknown or repeated keys, a weight
/// other than `"light"`, `"medium"`, `"heavy"`, a name outside 1..=64 bytes, a
/// non-positive timeout, more than 254 retries; anything but a free `fn`; `async`,
/// `unsafe` or generic fns; methods (`self`); `impl Trait` arguments or return types;
/// borrowed arguments other than `&'static`. The attribute cannot be used on an
/// associated fn inside an `impl` block.
#[proc_macro_attribute]
pub fn operation(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = TokenStream2::from(input);
    match expand(args.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        // Keep the item as written so that its other uses do not add errors of their own.
        Err(error) => {
            let error = error.to_compile_error();
            quote!(#item #error).into()
        }
    }
}

fn expand(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let options = Options::parse(args)?;
    let function = match syn::parse2::<Item>(item.clone())? {
        Item::Fn(function) => function,
        other => {
            return Err(syn::Error::new(
                Span::call_site(),
                format_args!(
                    "#[tokengate::operation] goes on a plain `fn`, not on {}",
                    item_kind(&other)
                ),
            ))
        }
    };
    let signature = Signature::check(&function)?;
    Ok(generate(&function, &options, &signature, item))
}

/// What an item is, for the error when it is not a fn.
fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::Struct(_) => "a struct",
        Item::Enum(_) => "an enum",
        Item::Union(_) => "a union",
        Item::Impl(_) => "an impl block",
        Item::Trait(_) => "a trait",
        Item::Mod(_) => "a module",
        Item::Const(_) => "a const",
        Item::Static(_) => "a static",
        Item::Type(_) => "a type alias",
        Item::Use(_) => "a use declaration",
        Item::ForeignMod(_) => "an extern block",
        Item::Macro(_) => "a macro",
        _ => "this item",
    }
}

enum Weight {
    Light,
    Medium,
    Heavy,
}

struct Options {
    weight: Weight,
    timeout_ms: Option<(u64, Span)>,
    retries: Option<(u8, Span)>,
    name: Option<LitStr>,
}

impl Options {
    fn parse(args: TokenStream2) -> syn::Result<Options> {
        let mut weight = None;
        let mut timeout_ms = None;
        let mut retries = None;
        let mut name = None;
        let parser = syn::meta::parser(|meta| {
            let key = meta.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
            let repeated = || meta.error(format_args!("`{key}` is given twice"));
            match key.as_str() {
                "weight" => {
                    if weight.is_some() {
                        return Err(repeated());
                    }
                    let value = meta.value()?;
                    if !value.peek(LitStr) {
                        return Err(value.error(
                            "expected a string: weight = \"light\", \"medium\" or \"heavy\"",
                        ));
                    }
                    weight = Some(parse_weight(&value.parse()?)?);
                }
                "timeout_ms" => {
                    if timeout_ms.is_some() {
                        return Err(repeated());
                    }
                    let lit: LitInt = meta.value()?.parse()?;
                    let ms: u64 = lit.base10_parse()?;
                    if ms == 0 {
                        return Err(syn::Error::new(lit.span(), "timeout_ms must be at least 1"));
                    }
                    timeout_ms = Some((ms, meta.path.span()));
                }
                "retries" => {
                    if retries.is_some() {
                        return Err(repeated());
                    }
                    let lit: LitInt = meta.value()?.parse()?;
                    let count: u8 = match lit.base10_parse::<u64>()? {
                        n @ 0..=254 => n as u8,
                        _ => return Err(syn::Error::new(lit.span(), "retries must be 0..=254")),
                    };
                    retries = Some((count, meta.path.span()));
                }
                "name" => {
                    if name.is_some() {
                        return Err(repeated());
                    }
                    let lit: LitStr = meta.value()?.parse()?;
                    if !(1..=64).contains(&lit.value().len()) {
                        return Err(syn::Error::new(
                            lit.span(),
                            "an operation's name must be 1 to 64 bytes",
                        ));
                    }
                    name = Some(lit);
                }
                _ => {
                    let key = meta.path.to_token_stream().to_string().replace(' ', "");
                    return Err(meta.error(format_args!(
                        "unknown option `{key}`: expected `weight`, `timeout_ms`, `retries` \
                         or `name`"
                    )));
                }
            }
            Ok(())
        });
        syn::parse::Parser::parse2(parser, args)?;
        let weight = weight.ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                "missing `weight`: #[tokengate::operation(weight = \"light\")] \
                 (or \"medium\", \"heavy\")",
            )
        })?;
        Ok(Options { weight, timeout_ms, retries, name })
    }
}

fn parse_weight(lit: &LitStr) -> syn::Result<Weight> {
    match lit.value().as_str() {
        "light" => Ok(Weight::Light),
        "medium" => Ok(Weight::Medium),
        "heavy" => Ok(Weight::Heavy),
        other => Err(syn::Error::new(
            lit.span(),
            format_args!("unknown weight {other:?}: expected \"light\", \"medium\" or \"heavy\""),
        )),
    }
}

/// What the generated code needs of the fn: its argument and return types.
struct Signature {
    args: Vec<Type>,
    output: Type,
}

impl Signature {
    fn check(function: &ItemFn) -> syn::Result<Signature> {
        let sig = &function.sig;
        let refuse = |span: Span, message: &str| Err(syn::Error::new(span, message));
        if let Some(token) = &sig.asyncness {
            return refuse(
                token.span,
                "an operation runs synchronously on a lane: `async fn` is not supported \
                 (callers await its tokens instead)",
            );
        }
        if let syn::Safety::Unsafe(token) = &sig.safety {
            return refuse(token.span, "an operation cannot be an `unsafe fn`");
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            return refuse(
                sig.generics.span(),
                "an operation cannot be generic: write a fn for each concrete type",
            );
        }
        let mut args = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(receiver) => {
                    return refuse(
                        receiver.span(),
                        "methods (`self`) are not supported: register a free fn that calls \
                         the method",
                    )
                }
                FnArg::Typed(arg) => {
                    check_type(&arg.ty, "argument")?;
                    args.push((*arg.ty).clone());
                }
            }
        }
        let output = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => {
                check_type(ty, "return type")?;
                (**ty).clone()
            }
        };
        Ok(Signature { args, output })
    }
}

/// Refuses what cannot be an operation's argument or result: `impl Trait` (a generic in
/// disguise), and borrows, since arguments and results move between threads.
fn check_type(ty: &Type, what: &str) -> syn::Result<()> {
    match ty {
        Type::ImplTrait(_) => Err(syn::Error::new(
            ty.span(),
            format_args!("an operation's {what} cannot be `impl Trait`: name the type"),
        )),
        Type::Reference(reference)
            if reference.lifetime.as_ref().is_none_or(|l| l.ident != "static") =>
        {
            Err(syn::Error::new(
                ty.span(),
                format_args!(
                    "an operation's {what} moves between threads: it must own its data \
                     (e.g. `String`, `Vec<T>`) or be `&'static`"
                ),
            ))
        }
        Type::Tuple(tuple) => tuple.elems.iter().try_for_each(|ty| check_type(ty, what)),
        Type::Paren(inner) => check_type(&inner.elem, what),
        _ => Ok(()),
    }
}

fn generate(
    function: &ItemFn,
    options: &Options,
    signature: &Signature,
    item: TokenStream2,
) -> TokenStream2 {
    let vis = &function.vis;
    let ident = &function.sig.ident;
    let name = match &options.name {
        Some(name) => name.clone(),
        None => LitStr::new(&ident.unraw().to_string(), ident.span()),
    };
    let weight = match options.weight {
        Weight::Light => quote!(::tokengate::Weight::Light),
        Weight::Medium => quote!(::tokengate::Weight::Medium),
        Weight::Heavy => quote!(::tokengate::Weight::Heavy),
    };
    let timeout = options.timeout_ms.map(
        |(ms, span)| quote_spanned!(span=> .timeout(::core::time::Duration::from_millis(#ms))),
    );
    // `retries` counts the runs after the first; a policy counts them all.
    let retry = options.retries.filter(|(count, _)| *count > 0).map(|(count, span)| {
        let attempts = count + 1;
        quote_spanned!(span=> .retry(::tokengate::RetryPolicy::new(#attempts)))
    });
    let types = &signature.args;
    let names: Vec<_> = (0..types.len()).map(|i| format_ident!("__tokengate_arg{i}")).collect();
    let (arg_type, pattern) = match types.len() {
        1 => (quote!(#(#types)*), quote!(#(#names)*)),
        _ => (quote!((#(#types,)*)), quote!((#(#names,)*))),
    };
    let output = &signature.output;
    // A raw identifier (`r#type`) cannot be an intra-doc link target.
    let shown = ident.unraw();
    let link =
        if shown == *ident { format!("[`{shown}`](fn@{shown})") } else { format!("`{shown}`") };
    let type_doc = format!(
        "Registers {link} as the operation `{}`: `{shown}::register(&engine)` \
         (from `#[tokengate::operation]`).",
        name.value()
    );
    let register_doc = format!(
        "Registers {link} with `engine` as the operation `{}`; refused when the engine \
         already has an operation of that name.",
        name.value()
    );
    // What is compiled out with the fn goes with it.
    let cfgs = function.attrs.iter().filter(|attr| attr.path().is_ident("cfg"));
    let cfgs = quote!(#(#cfgs)*);
    quote! {
        #item

        #cfgs
        #[doc = #type_doc]
        #[allow(non_camel_case_types, dead_code, missing_debug_implementations)]
        #vis enum #ident {}

        #cfgs
        #[allow(dead_code)]
        impl #ident {
            /// The operation's name on the engine and on the control port.
            #vis const NAME: &'static str = #name;

            #[doc = #register_doc]
            #vis fn register(
                engine: &::tokengate::Engine,
            ) -> ::core::result::Result<
                ::tokengate::Operation<#arg_type, #output>,
                ::tokengate::RegisterError,
            > {
                engine
                    .operation::<#arg_type>(Self::NAME, #weight)
                    #timeout
                    #retry
                    .register(|#pattern: #arg_type| #ident(#(#names),*))
            }
        }
    }
}
