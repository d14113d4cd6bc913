//! Outpost image builder: recipe to reproducible root file system (to be written)
