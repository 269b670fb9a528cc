from dhtdeb.cli import main

main()
