"""The model families: one `FamilySpec` and one LightningModule each (`registry`), built by one recipe (`build`)."""
