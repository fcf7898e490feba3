//! Published genotypes (DARTS notation taken from `shared/reference/darts.md`).

use crate::genotype::Genotype;

/// Canonical zoo names.
pub const NAMES: [&str; 3] = ["DARTS_V1", "DARTS_V2", "PC_DARTS"];

const DARTS_V1: &str = "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])";

const DARTS_V2: &str = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";

const PC_DARTS: &str = "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))";

/// Looks a genotype up by name, case-insensitive (`PC_DARTS_cifar` is an alias of `PC_DARTS`).
pub fn by_name(name: &str) -> Option<Genotype> {
    let text = match name.to_ascii_uppercase().as_str() {
        "DARTS_V1" => DARTS_V1,
        "DARTS_V2" | "DARTS" => DARTS_V2,
        "PC_DARTS" | "PC_DARTS_CIFAR" => PC_DARTS,
        _ => return None,
    };
    Genotype::from_darts(text).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_case_insensitive_and_aliased() {
        assert_eq!(super::by_name("pc_darts_cifar"), super::by_name("PC_DARTS"));
        assert!(super::by_name("darts_v1").is_some());
        assert!(super::by_name("nope").is_none());
    }
}
