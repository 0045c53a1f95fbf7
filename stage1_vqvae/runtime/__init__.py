"""Run machinery shared by both stages, knowing nothing of the VQ-VAE: trainer construction,
checkpoint IO and stamps, atomic files, progress lines, data order and resumable loaders,
run folders, image grids and the user-error type. Stage two may import this subpackage and
``stage1_vqvae.codes``, nothing else of stage one."""
