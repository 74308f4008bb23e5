"""The log: every `dsvl ask` answer and chat turn in one SQLite file, searchable, continued by `ask -c`.

store.py (the file: path, WAL, migrations, queries), migrations.py (the schema, versioned),
entry.py (one answered question -> one row; pictures as source + sha256, never pixels),
writer.py (front ends write through it: a failing file is a warning, never a lost answer),
history.py (a logged conversation rebuilt to go on with), show.py (`dsvl logs` output).

A front-end-level package: commands and chat import it; the engine never does. batch and serve
do not log unless asked (--log).
"""
