//! The cost of checking one SMART client assertion, by algorithm: what every validator pays
//! for each login (`OpenSession`), and the token endpoint once more before it.
//!
//! One assertion of each kind (EdDSA with the identity key, RS384 with an RSA-2048 client
//! key, ES384 with a P-384 one) is verified `BENCH_ITERATIONS` times per round; the medians
//! over rounds and their ratios to EdDSA come from the same run.
//!
//!     cargo bench -p ehrchain-crypto --bench assertions       # BENCH_ROUNDS=15 by default

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ehrchain_crypto::jwk::{ClientJwk, ClientKey};
use ehrchain_crypto::jwt::{self, Claims};
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let rounds = env("BENCH_ROUNDS", 15);
    let iterations = env("BENCH_ITERATIONS", 200);
    let seed = [7u8; 32];
    let identity = jwt::public_key(&seed);
    let sub = hex::encode(identity);
    let claims = Claims {
        iss: sub.clone(),
        sub,
        aud: "https://127.0.0.1:8700/auth/token".into(),
        exp: 1_800_000_000,
        jti: "bench".into(),
        iat: None,
        nbf: None,
        client_id: None,
        scope: None,
    };
    let compact = |header: &str, sign: &dyn Fn(&[u8]) -> Vec<u8>| {
        let signed = format!(
            "{}.{}",
            B64.encode(header),
            B64.encode(serde_json::to_vec(&claims).expect("claims serialize"))
        );
        let signature = sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(signature))
    };
    let eddsa = jwt::sign(&seed, &claims);

    let private = rsa::PrivateKey::new(&mut rsa::rand_core::UnwrapErr(getrandom::SysRng), 2048)
        .expect("an RSA key");
    let public = private.to_public_key();
    let rsa_key = ClientJwk {
        kid: "rsa".into(),
        key: ClientKey::Rs384 {
            n: public.n_bytes().to_vec(),
            e: public.e_bytes().to_vec(),
        },
    };
    let rsa_signer = rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new(private);
    let rs384 = compact(r#"{"alg":"RS384","kid":"rsa"}"#, &|bytes| {
        rsa_signer.sign(bytes).to_vec()
    });

    let ec = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).expect("a P-384 scalar");
    let point: [u8; 97] = ec
        .verifying_key()
        .to_sec1_point(false)
        .as_bytes()
        .try_into()
        .expect("an uncompressed point");
    let ec_key = ClientJwk {
        kid: "ec".into(),
        key: ClientKey::Es384 { point },
    };
    let es384 = compact(r#"{"alg":"ES384","kid":"ec"}"#, &|bytes| {
        let signature: p384::ecdsa::Signature = p384::ecdsa::signature::Signer::sign(&ec, bytes);
        signature.to_bytes().to_vec()
    });

    let keys = [rsa_key, ec_key];
    let cases = [("EdDSA", &eddsa), ("RS384", &rs384), ("ES384", &es384)];
    for (name, assertion) in cases {
        jwt::verify(assertion, &identity, &keys).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut samples = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (i, (_, assertion)) in cases.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..iterations {
                let _ = std::hint::black_box(jwt::verify(assertion, &identity, &keys));
            }
            samples[i].push(start.elapsed().as_secs_f64() * 1e6 / iterations as f64);
        }
    }
    let medians: Vec<f64> = samples.into_iter().map(median).collect();
    println!("{rounds} rounds of {iterations} verifications each (parse, key lookup, signature)");
    for ((name, assertion), us) in cases.iter().zip(&medians) {
        println!(
            "{name}: {us:8.1} µs median per assertion ({} bytes), {:6.2}× EdDSA, {:7.0} logins/s per core",
            assertion.len(),
            us / medians[0],
            1e6 / us
        );
    }
}
