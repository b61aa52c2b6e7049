"""SQLAlchemy 2 on psycopg through pgsplit: ORM-style session work, reads
on replicas, writes and transactions on the primary."""
from sqlalchemy import Integer, String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from common import HOST, PORT, check, on_primary, on_replica, replicas_replayed


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "drv_sqlalchemy"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), nullable=True)


engine = create_engine(f"postgresql+psycopg://app:app@{HOST}:{PORT}/app", isolation_level="AUTOCOMMIT")
Base.metadata.create_all(engine)
engine.dispose()  # a new session: its reads are not held back by the CREATE

with engine.connect() as conn:
    ports = {conn.execute(text("SELECT inet_server_port()")).scalar() for _ in range(20)}
    for p in ports:
        on_replica(p, "autocommit read")

tx_engine = create_engine(f"postgresql+psycopg://app:app@{HOST}:{PORT}/app")
with Session(tx_engine) as session:
    session.add_all([Item(name="a"), Item(name=None)])
    session.flush()
    port = session.execute(text("SELECT inet_server_port()")).scalar()
    on_primary(port, "read in the ORM's transaction")
    names = session.scalars(select(Item.name).where(Item.name == "a")).all()
    check("a" in names, "session sees its own rows")
    session.commit()
# Once the replicas have replayed the ORM's writes, its reads run on them.
replicas_replayed("SELECT count(*) FROM drv_sqlalchemy")
with Session(tx_engine) as session:
    for _ in range(5):
        port = session.execute(text("SELECT inet_server_port()")).scalar()
        session.commit()
        on_primary(port, "a read in the ORM's transaction (BEGIN without READ ONLY)")
with engine.connect() as conn:
    for _ in range(10):
        port, n = conn.execute(text("SELECT inet_server_port(), count(*) FROM drv_sqlalchemy WHERE name = 'a'")).one()
        on_replica(port, "autocommit read after the writes replayed")
        check(n >= 1, "the replica has the ORM's write")
print("sqlalchemy ok")
