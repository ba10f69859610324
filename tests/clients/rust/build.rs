//! Generates the client from the spec named by `EXPORTD_SPEC` with progenitor's defaults.
fn main() {
    let path = std::env::var("EXPORTD_SPEC").expect("EXPORTD_SPEC: the path of exportd's /openapi.json");
    println!("cargo:rerun-if-env-changed=EXPORTD_SPEC");
    println!("cargo:rerun-if-changed={path}");
    let text = std::fs::read_to_string(&path).expect("EXPORTD_SPEC is readable");
    let spec: openapiv3::OpenAPI = serde_json::from_str(&text).expect("the spec parses as OpenAPI 3.0");
    let mut generator = progenitor::Generator::default();
    let tokens = generator.generate_tokens(&spec).expect("progenitor generates a client from the spec");
    let ast = syn::parse2(tokens).expect("the generated client parses");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("client.rs");
    std::fs::write(out, prettyplease::unparse(&ast)).unwrap();
}
