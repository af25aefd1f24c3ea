from dinotune.cli import main

main()
