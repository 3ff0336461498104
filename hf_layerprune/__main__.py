from hf_layerprune.cli import main

main()
