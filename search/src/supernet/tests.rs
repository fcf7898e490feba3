use super::*;
use rand::SeedableRng;

type B = burn::backend::Flex;

#[test]
fn node_edge_ranges_cover_the_14_edges() {
    let r: Vec<_> = (0..NODES).map(node_edges).collect();
    assert_eq!(r, vec![0..2, 2..5, 5..9, 9..14]);
}

#[test]
fn supernet_logits_have_the_right_shape() {
    let device = Default::default();
    for (k, identity) in [(1, false), (4, true)] {
        let cfg = SupernetConfig::new()
            .with_channels(8)
            .with_layers(5)
            .with_in_channels(1)
            .with_image_size(28)
            .with_partial_k(k)
            .with_identity(identity);
        let net = cfg.init::<B>(&device).unwrap();
        let x = Tensor::<B, 4>::random([2, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
        let y = net.forward(x, &mut StdRng::seed_from_u64(0));
        assert_eq!(y.dims(), [2, 10]);
        assert_eq!(net.genotype().normal().edges.len(), 8);
    }
}

#[test]
fn cell_stages_follow_the_reductions() {
    // L = 5: reductions at cells 1 and 3.
    assert_eq!(
        (0..5).map(|i| cell_stage(5, i)).collect::<Vec<_>>(),
        [0, 1, 1, 2, 2]
    );
    assert_eq!(
        (0..8).map(|i| cell_stage(8, i)).collect::<Vec<_>>(),
        [0, 0, 1, 1, 1, 2, 2, 2]
    );
}

/// Progressive search: stage s has the derived cells of the earlier stages in front of
/// its own search cells, and no deeper cells.
#[test]
fn progressive_stages_deepen_the_supernet() {
    let device = Default::default();
    let cfg = SupernetConfig::new()
        .with_channels(4)
        .with_layers(5)
        .with_in_channels(1)
        .with_image_size(16)
        .with_stages(3);
    let pair = splitnas_models::zoo::by_name("DARTS_V2").unwrap().stages()[0].clone();
    let x = Tensor::<B, 4>::random([2, 1, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    for (frozen, fixed, search) in [(0, 0, 1), (1, 1, 2), (2, 3, 2)] {
        let pairs = vec![pair.clone(); frozen];
        let net = cfg.init_stage::<B>(&device, &pairs).unwrap();
        assert_eq!(net.weights.fixed.len(), fixed, "stage {frozen}");
        assert_eq!(net.weights.cells.len(), search, "stage {frozen}");
        let y = net.forward(x.clone(), &mut StdRng::seed_from_u64(0));
        assert_eq!(y.dims(), [2, 10]);
    }
    // The reduction cells are search cells exactly where the stage opens with one.
    let net = cfg.init_stage::<B>(&device, &[pair.clone()]).unwrap();
    assert!(net.weights.cells[0].reduction && !net.weights.cells[1].reduction);
    let err = cfg
        .init_stage::<B>(&device, &vec![pair.clone(); 3])
        .unwrap_err();
    assert_eq!(
        err,
        SupernetError::NoSuchStage {
            stage: 4,
            stages: 3
        }
    );
    let err = cfg.clone().with_stages(2).validate().unwrap_err();
    assert_eq!(err, SupernetError::Stages(2));
}

#[test]
fn slim_options_check_their_channel_counts() {
    let err = SupernetConfig::new()
        .with_channels(12)
        .with_learn_proportion(true)
        .validate()
        .unwrap_err();
    assert_eq!(err, SupernetError::ProportionChannels(12));
    assert!(SupernetConfig::new()
        .with_channels(16)
        .with_learn_proportion(true)
        .with_spatial_reconstruction(true)
        .validate()
        .is_ok());
    assert!(SupernetConfig::new()
        .with_channels(8)
        .with_learn_proportion(true)
        .with_spatial_reconstruction(true)
        .validate()
        .is_ok());
}

#[test]
fn k_that_does_not_divide_c_is_rejected() {
    let err = SupernetConfig::new()
        .with_channels(6)
        .with_partial_k(4)
        .validate()
        .unwrap_err();
    assert_eq!(err, SupernetError::PartialK { k: 4, channels: 6 });
}
