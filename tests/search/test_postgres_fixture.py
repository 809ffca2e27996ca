import sqlalchemy as sa


def test_postgres_server_answers(postgres_url):
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar() == 1
    engine.dispose()
