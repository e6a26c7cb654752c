"""Cross-modal search: a persistent vector index, query encoders (the joint space curata trains, or a
CLIP plug-in) and the NFT1000-style retrieval evaluation. Import from the submodules."""
