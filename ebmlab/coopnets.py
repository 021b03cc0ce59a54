"""CoopNets (Xie, Lu, Gao, Wu; AAAI 2018): cooperative learning of an EBM and a generator."""

COOPNETS_PRESETS: dict = {}
